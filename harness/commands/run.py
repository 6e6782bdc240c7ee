"""`bdpo run [CONFIG] [overrides]`: train -> generate -> score -> report, cached and resumable."""

from __future__ import annotations

import argparse
import contextlib
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
    parser.add_argument("--jobs", type=int, metavar="N",
                        help="independent stages at once, each in its own process with its own devices "
                             "(local: GPUs // N each, else cores // N threads each; at most one job per device). "
                             "Default: local 1, in this process as always; ray: as many as the cluster holds")
    parser.add_argument("--executor", default="local", metavar="NAME",
                        help="where the jobs run: local (this machine) or ray (a running Ray cluster: every node "
                             "sees the run directory, data and models at the same paths; the config's `resources` "
                             "say what each stage kind asks for); see `bdpo ls executor` and docs/scale-out.md")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="the Ray cluster to use (host:port of its head; default 'auto': RAY_ADDRESS or the "
                             "cluster started on this machine)")


def run(args: argparse.Namespace) -> int:
    from harness.config import load_config, split_config_arg
    from harness.errors import UserError
    from harness.pipeline import Pipeline, print_statuses, summarize
    from harness.registries import EXECUTORS

    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: must be at least 1.")
    cfg = load_config(*split_config_arg(args.config, args.overrides))
    console = Console(stderr=True)
    pipeline = Pipeline(cfg, console=console, progress=not args.no_progress)
    start = time.monotonic()
    # The default (local, one job) runs every stage in this process, sharing one generation engine and
    # the scorer models between stages; anything else runs each stage as a job of an executor, checked
    # (devices, cluster) before any stage runs.
    parallel = args.executor != "local" or (args.jobs or 1) > 1 or args.ray_address is not None
    executor = EXECUTORS.get(args.executor)(cfg, args.jobs, args.ray_address, args.verbose) if parallel else None
    with executor or contextlib.nullcontext():
        statuses = pipeline.execute(dry_run=args.dry_run, executor=executor)
    print_statuses(statuses, f"{'plan' if args.dry_run else 'stages'}: {pipeline.run.root}", console)
    if not args.dry_run:
        summarize(pipeline.run.root, Console())
        page = pipeline.run.root / "report" / "index.html"
        console.print(f"finished in {time.monotonic() - start:.1f} s" + (f"; report: {page}" if page.exists() else ""))
    return 0
