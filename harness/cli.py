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

# Printed to stderr so results on stdout stay machine-readable.
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def command_modules() -> list[ModuleType]:
    mods = [importlib.import_module(f"harness.commands.{m.name}") for m in pkgutil.iter_modules(harness.commands.__path__)]
    return sorted(mods, key=lambda m: m.NAME)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bdpo",
        description="Train, generate, score and report: does Balanced-DPO beat DPO on your model and data?",
    )
    parser.add_argument("--version", action="version", version=f"bdpo-harness {harness.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in command_modules():
        text = mod.HELP.replace("%", "%%")  # argparse %-formats help strings
        p = sub.add_parser(mod.NAME, help=text, description=text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
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
