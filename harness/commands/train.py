"""`bdpo train CONFIG`: train every variant of a config on its policy-training pairs.

The data are the config's sources, split as the pipeline splits them (held-out evaluation and
scorer prompts are never trained on). Each variant is trained with seed `seeds[0]` (or --seed) into
`<output-dir>/<variant>-seed<seed>/`: a Hugging Face checkpoint, train_log.jsonl and
train_record.json (see trainers/trainer.py). Rerunning the same command resumes an interrupted
variant from its last checkpoint and skips finished ones.
"""

from __future__ import annotations

import argparse
import logging

NAME = "train"
HELP = "Train each variant of a config (DPO, bDPO, ...) on its policy-training pairs; resumes when rerun."

# Summary columns: (train log field, heading).
SUMMARY = (("step", "steps"), ("loss", "loss"), ("rewards/accuracies", "reward accuracy"),
           ("rewards/margins", "reward margin"), ("logps/chosen", "log-prob chosen"),
           ("logps/rejected", "log-prob rejected"), ("lambda/mean", "lambda mean"),
           ("log_grad_ratio/median", "log grad ratio median"), ("train_runtime", "seconds"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config (default: the embedded quickstart)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=100")
    parser.add_argument("--output-dir", help="where the checkpoints go (default: <run_root>/<experiment>/checkpoints)")
    parser.add_argument("--seed", type=int, help="training seed (default: the config's first seed)")
    parser.add_argument("--variant", action="append", help="train only this variant; repeat for several")
    parser.add_argument("--cache-dir", help="reference log-prob cache (default: <output-dir>/.cache)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console
    from rich.logging import RichHandler
    from rich.table import Table

    from harness.config import load_config, split_config_arg, variant_train_config
    from harness.data import load_sources, split_data
    from harness.errors import UserError
    from harness.registry import suggest

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    cfg = load_config(*split_config_arg(args.config, args.overrides))
    variants = list(cfg.variants)
    if args.variant:
        names = [v.name for v in variants]
        for name in args.variant:
            if name not in names:
                raise UserError(f"--variant {name}: no such variant in the config.{suggest(name, names)} "
                                f"Known: {', '.join(names)}.")
        variants = [v for v in variants if v.name in args.variant]
    seed = cfg.seeds[0] if args.seed is None else args.seed
    output_dir = Path(args.output_dir) if args.output_dir else Path(cfg.run_root) / cfg.experiment / "checkpoints"
    cache_dir = Path(args.cache_dir) if args.cache_dir else output_dir / ".cache"

    # The trainer reports tokenisation, truncation, reference and resume decisions through logging.
    handler = RichHandler(console=console, show_path=False, show_time=False)
    logging.getLogger("trainers").addHandler(handler)
    logging.getLogger("trainers").setLevel(logging.INFO)

    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # weight loading and saving bars

    pairs, reports = load_sources(cfg.data)
    for report in reports:
        console.print(report.summary(), markup=False)
    split = split_data(pairs, cfg.data)
    console.print(f"training on {len(split.train_pairs)} pairs ({len(split.eval_prompts)} evaluation prompts and "
                  f"{len(split.scorer_pairs)} scorer pairs held out)", markup=False)

    from trainers.trainer import train_policy

    results = {}
    for variant in variants:
        unit = f"{variant.name}-seed{seed}"
        console.rule(f"{unit}: loss {variant.loss} {variant.params or ''}".strip())
        results[unit] = train_policy(cfg.model, variant_train_config(cfg, variant), variant, split.train_pairs,
                                     output_dir / unit, seed, cache_dir, progress=not args.no_progress)

    # One column per trained unit: a handful of variants fits a terminal, a dozen metrics would not.
    table = Table(title=f"trained into {output_dir} (metrics of the last logged step)", title_justify="left")
    table.add_column("metric", style="bold", no_wrap=True)
    for unit in results:
        table.add_column(unit, justify="right", no_wrap=True)
    for key, label in SUMMARY:
        table.add_row(label, *(f"{m[key]:.4g}" if key in m else "-" for m in results.values()))
    Console().print(table)
    return 0
