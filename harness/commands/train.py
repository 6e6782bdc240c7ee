"""`bdpo train CONFIG`: the pipeline's training stages, alone.

Trains every variant x seed of the config (or those --variant/--seed pick) on its policy-training
pairs, exactly as `bdpo run` does: the same stages (harness/stage_commands.py), into the same run
directory `<run_root>/<experiment>/checkpoints/<variant>-seed<seed>/` (a Hugging Face checkpoint,
train_log.jsonl, train_record.json; see trainers/trainer.py), with the same stage records. The data
split is run first when it is not there yet. What `bdpo train` made, `bdpo run` reuses, and the other
way round; rerunning resumes an interrupted unit from its last checkpoint and skips finished ones.
"""

from __future__ import annotations

import argparse
import logging

NAME = "train"
HELP = ("Train each variant x seed of a config (DPO, bDPO, ...): the training stages of `bdpo run`, into "
        "its run directory; resumes when rerun, and `bdpo run` reuses what it trained.")

# Summary columns: (train log field, heading).
SUMMARY = (("step", "steps"), ("loss", "loss"), ("rewards/accuracies", "reward accuracy"),
           ("rewards/margins", "reward margin"), ("logps/chosen", "log-prob chosen"),
           ("logps/rejected", "log-prob rejected"), ("lambda/mean", "lambda mean"),
           ("log_grad_ratio/median", "log grad ratio median"), ("train_runtime", "seconds"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from harness.stage_commands import add_run_arguments, add_unit_arguments

    add_run_arguments(parser, "YAML config (default: the embedded quickstart)")
    add_unit_arguments(parser, reference=False, seed=True)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.logging import RichHandler
    from rich.table import Table

    from harness.io import read_json
    from harness.stage_commands import load, run_stages, select_units

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    cfg = load(args)
    units = select_units(cfg, args.variant, args.seed, reference=False)

    # The trainer reports tokenisation, truncation, reference and resume decisions through logging.
    handler = RichHandler(console=console, show_path=False, show_time=False)
    logging.getLogger("trainers").addHandler(handler)
    logging.getLogger("trainers").setLevel(logging.INFO)
    try:
        pipeline, _ = run_stages(cfg, [f"train/{u}" for u in units], args, console)
    finally:
        logging.getLogger("trainers").removeHandler(handler)
    if args.dry_run:
        return 0

    # One column per trained unit: a handful of variants fits a terminal, a dozen metrics would not.
    checkpoints = pipeline.run.path("checkpoints")
    metrics = {u: read_json(checkpoints / u / "train_record.json")["final_metrics"] for u in units}
    table = Table(title=f"trained into {checkpoints} (metrics of the last logged step)", title_justify="left")
    table.add_column("metric", style="bold", no_wrap=True)
    for unit in metrics:
        table.add_column(unit, justify="right", no_wrap=True)
    for key, label in SUMMARY:
        table.add_row(label, *(f"{m[key]:.4g}" if m.get(key) is not None else "-" for m in metrics.values()))
    Console().print(table)
    return 0
