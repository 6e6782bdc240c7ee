"""`bdpo` command line. Each subcommand is one module in harness/commands/ that defines
NAME, HELP, add_arguments(parser) and run(args) -> exit code; this file only dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from types import ModuleType

from rich.console import Console
from rich.markup import escape

import harness
import harness.commands
from harness.errors import UserError
from harness.terminal import quiet_third_party

# Printed to stderr so results on stdout stay machine-readable.
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def command_modules() -> list[ModuleType]:
    mods = [importlib.import_module(f"harness.commands.{m.name}") for m in pkgutil.iter_modules(harness.commands.__path__)]
    return sorted(mods, key=lambda m: m.NAME)


class HelpFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to an option's help, unless the help already says its default or there
    is none worth printing (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS) and action.option_strings
        if shown and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="show the libraries' own logs, warnings and progress bars (transformers, vLLM, ...)")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The `bdpo` parser (it lists the commands in --help) and each command's own parser."""
    parser = argparse.ArgumentParser(
        prog="bdpo",
        description="Train, generate, score and report: does Balanced-DPO beat DPO on your model and data?",
    )
    parser.add_argument("--version", action="version", version=f"bdpo-harness {harness.__version__}")
    _add_common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = {}
    for mod in command_modules():
        text = mod.HELP.replace("%", "%%")  # argparse %-formats help strings
        p = sub.add_parser(mod.NAME, help=text, description=text, formatter_class=HelpFormatter)
        mod.add_arguments(p)
        _add_common(p)
        p.set_defaults(_run=mod.run)
        commands[mod.NAME] = p
    return parser, commands


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Options and positionals in any order (`bdpo train C.yaml --variant dpo train.max_steps=4`).

    argparse's intermixed parsing does not support subparsers, so `bdpo`'s own options are parsed
    first and the command's parser then parses the rest intermixed.
    """
    parser, commands = build_parser()
    at = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if at is None or argv[at] not in commands:
        return parser.parse_args(argv)  # --help, --version, no command, or argparse's "invalid choice"
    top = parser.parse_args(argv[:at])
    args = commands[argv[at]].parse_intermixed_args(argv[at + 1:])
    args.command = argv[at]
    args.verbose = args.verbose or top.verbose
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    if not getattr(args, "_run", None):
        build_parser()[0].print_help()
        return 0
    quiet_third_party(args.verbose)
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        # The message is plain text: "[safer, less_safe]" or a path like "/data/[v2]/x" is not markup.
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", markup=True, highlight=False)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted; finished stages are kept, rerun the same command to resume.")
        return 130


if __name__ == "__main__":
    sys.exit(main())
