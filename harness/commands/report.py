"""`bdpo report RUN_DIR`: rebuild the leaderboard, comparisons, ablations, plots and HTML page from
the run's result files alone (no model, no GPU), or from a committed results folder such as
docs/results/hh-study/ (docs/results-schema.md)."""

from __future__ import annotations

import argparse

from rich.console import Console

NAME = "report"
HELP = ("Build the report (index.html, leaderboard.md/.csv, results.json, plots) from a run directory's result files "
        "or a results folder.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="run directory, e.g. runs/quickstart, or a results folder")
    parser.add_argument("--out", default=None, help="report folder (default: RUN_DIR/report, plus RUN_DIR/results.json; "
                                                    "a results folder: its own report files)")
    parser.add_argument("--bootstrap-samples", type=int, default=None,
                        help="resamples of the cross-check crossed bootstrap (default: the run config's "
                             "report.bootstrap_samples)")
    parser.add_argument("--seed", type=int, default=None, help="bootstrap seed (default: report.seed)")
    parser.add_argument("--export", default=None, metavar="FOLDER",
                        help="first write RUN_DIR's results folder (the small files, without models and completion "
                             "texts, to commit) at FOLDER, a new folder, then build the report there")
    parser.add_argument("--max-sample-prompts", type=int, default=50,
                        help="prompts shown in the page's samples table")


def run(args: argparse.Namespace) -> int:
    from harness.errors import UserError
    from reports.build import build_report

    if args.bootstrap_samples is not None and args.bootstrap_samples < 100:
        raise UserError(f"--bootstrap-samples: must be at least 100, got {args.bootstrap_samples}.")
    if args.max_sample_prompts < 0:
        raise UserError(f"--max-sample-prompts: must be >= 0, got {args.max_sample_prompts}.")
    if args.export is not None and args.out is not None:
        raise UserError("--export and --out: give one (an exported results folder holds its own report).")
    console = Console(stderr=True)
    options = dict(bootstrap_samples=args.bootstrap_samples, seed=args.seed, max_sample_prompts=args.max_sample_prompts)
    with console.status("building report (statistics, plots)..."):
        if args.export is not None:
            from reports.results_folder import export_results_folder

            out = export_results_folder(args.run_dir, args.export, **options)
        else:
            out = build_report(args.run_dir, args.out, **options)
    Console().print(f"report: {out / 'index.html'}", markup=False, highlight=False)
    return 0
