"""`bdpo ls`: list the registered losses, data formats, generators, scorers, executors and built-in models."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape
from rich.table import Table

NAME = "ls"
HELP = "List the registered losses, data formats, generators, scorers, executors and built-in models."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", nargs="?", choices=["loss", "data", "generator", "engine-reuse", "scorer", "executor", "model"],
                        help="show only this kind")


def loss_parameters(fn: object) -> str:
    """'beta=0.1, clip=0.3, ...': a loss's keyword parameters with their defaults, and whether it reads no reference."""
    import inspect

    params = [f"{n}={p.default}" for n, p in inspect.signature(fn).parameters.items()
              if p.kind is inspect.Parameter.KEYWORD_ONLY]
    return ", ".join(params) + ("" if getattr(fn, "uses_reference", True) else "; no reference")


def run(args: argparse.Namespace) -> int:
    from harness.models import BUILTIN_MODELS
    from harness.registries import DATA_FORMATS, ENGINE_REUSE, EXECUTORS, GENERATORS, LOSSES, SCORERS
    from harness.registry import summary

    kinds = {"loss": LOSSES, "data": DATA_FORMATS, "generator": GENERATORS,
             "engine-reuse": ENGINE_REUSE, "scorer": SCORERS, "executor": EXECUTORS, "model": BUILTIN_MODELS}
    titles = {"loss": "losses", "data": "data formats", "generator": "generators",
              "engine-reuse": "generation engine reuse (generate.engine_reuse)", "scorer": "scorers",
              "executor": "executors (bdpo run --jobs N, --executor NAME)",
              "model": "built-in models"}
    console = Console()
    for key, registry in kinds.items():
        if args.kind and args.kind != key:
            continue
        table = Table(title=titles[key], title_justify="left")
        table.add_column("name", style="bold")
        table.add_column("description")
        if key == "loss":
            table.add_column("parameters (default)")
        for name, obj in registry.items():
            extra = [escape(loss_parameters(obj))] if key == "loss" else []
            table.add_row(escape(name), escape(summary(obj)), *extra)
        console.print(table)
    return 0
