"""`bdpo run [CONFIG] [overrides]`: train -> generate -> score -> report, cached and resumable."""

from __future__ import annotations

import argparse
import time

from rich.console import Console

NAME = "run"
HELP = ("Run the whole pipeline (train, generate, score, report) for every variant x seed in the config; "
        "finished stages are cached, a killed run resumes. With no config: the embedded quickstart.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config (default: the embedded quickstart, no GPU, no Hub)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. variants.bdpo.params.clip=0.2")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (what runs, what is cached) and stop")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")


def run(args: argparse.Namespace) -> int:
    from harness.config import load_config, split_config_arg
    from harness.pipeline import Pipeline, print_statuses, summarize

    cfg = load_config(*split_config_arg(args.config, args.overrides))
    console = Console(stderr=True)
    pipeline = Pipeline(cfg, console=console, progress=not args.no_progress)
    start = time.monotonic()
    statuses = pipeline.execute(dry_run=args.dry_run)
    print_statuses(statuses, f"{'plan' if args.dry_run else 'stages'}: {pipeline.run.root}", console)
    if not args.dry_run:
        summarize(pipeline.run.root, Console())
        page = pipeline.run.root / "report" / "index.html"
        console.print(f"finished in {time.monotonic() - start:.1f} s" + (f"; report: {page}" if page.exists() else ""))
    return 0
