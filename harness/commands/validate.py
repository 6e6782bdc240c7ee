"""`bdpo validate CONFIG`: check a config (keys, types, ranges, registered names) without running it."""

from __future__ import annotations

import argparse

from rich.console import Console

NAME = "validate"
HELP = "Check a config file and overrides without running anything; print the resolved config."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config (default: the embedded quickstart)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.learning_rate=1e-4")
    parser.add_argument("--quiet", action="store_true", help="print nothing when the config is valid")


def run(args: argparse.Namespace) -> int:
    from harness.config import dump_config, load_config, split_config_arg

    cfg = load_config(*split_config_arg(args.config, args.overrides))
    if not args.quiet:
        console = Console()
        console.print(dump_config(cfg), markup=False, highlight=False)
        console.print(f"[green]valid[/]: {args.config or 'embedded default'}")
    return 0
