"""`bdpo train-scorer`: the project's own Bradley-Terry reward or cost model, offline, in one of two ways.

- `bdpo train-scorer CONFIG [--scorer NAME]`: the pipeline's scorer stages, alone: each chosen scorer
  of the config with path `train:` is trained on the run's scorer split into
  `<run_root>/<experiment>/scorers/<name>/`, exactly as `bdpo run` does (same stages, run directory
  and records; harness/stage_commands.py).
- `bdpo train-scorer --data FORMAT[:PATH] --score-type TYPE --out DIR`: a scorer trained on data
  of your own, split by prompt into training and held-out pairs, outside any run directory.

Both train, calibrate and evaluate it with the same code (harness/scorer_stage.py); the settings'
defaults are a config scorer's (harness.config.ScorerConfig).
"""

from __future__ import annotations

import argparse
import math

from harness.config import ScorerConfig

NAME = "train-scorer"
HELP = ("Train small Bradley-Terry reward or cost models (MiniLM backbone, offline): the scorer stages of "
        "`bdpo run` for a config, or one model on your own data (--data, --score-type, --out), with its held-out "
        "pairwise accuracy and 95% CI.")

# Options of the own-data mode only.
FILE_OPTIONS = ("data", "score_type", "out", "eval_prompts", "split_seed", "max_pairs", "epochs", "max_steps",
                "batch_size", "lr", "max_length", "seed", "no_bf16", "overwrite")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from harness.stage_commands import add_run_arguments

    add_run_arguments(parser, "YAML config (default: the embedded quickstart); not with --data")
    parser.add_argument("--scorer", action="append",
                        help="with a config: only this scorer (path 'train:'); repeat for several (default: all)")
    parser.add_argument("--data", action="append", metavar="FORMAT[:PATH]",
                        help="own-data mode: preference data, e.g. hh-rlhf:path/helpful-base/test.jsonl.gz or "
                             "builtin-safety (repeat to combine sources; `bdpo ls data` lists formats)")
    parser.add_argument("--score-type", choices=["reward", "cost"],
                        help="reward: chosen scores higher (more helpful); cost: chosen (safer) scores lower")
    parser.add_argument("--out", help="folder to write the scorer to (Hugging Face format + scorer.json)")
    parser.add_argument("--eval-prompts", type=int,
                        help="held-out prompts (with all their pairs) for the pairwise accuracy; never trained on "
                             "(default: 200)")
    parser.add_argument("--split-seed", type=int, help="seed of the prompt-disjoint held-out split (default: 0)")
    parser.add_argument("--max-pairs", type=int, help="train on at most this many pairs (after the split)")
    parser.add_argument("--epochs", type=float, help="passes over the training pairs (sets the steps)")
    parser.add_argument("--max-steps", type=int,
                        help=f"optimiser steps (default: {ScorerConfig.train_steps}, or what --epochs sets)")
    parser.add_argument("--batch-size", type=int, help=f"pairs per step (default: {ScorerConfig.train_batch_size})")
    parser.add_argument("--lr", type=float, help="AdamW learning rate (linear warm-up and decay) "
                        f"(default: {ScorerConfig.train_learning_rate})")
    parser.add_argument("--max-length", type=int, help="tokens per (prompt, response); the start is cut "
                        f"(default: {ScorerConfig.train_max_length})")
    parser.add_argument("--seed", type=int, help="training seed (initialisation, batch order) (default: 0)")
    parser.add_argument("--no-bf16", action="store_true", help="train in float32 instead of bfloat16 autocast")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")


def parse_data_arg(value: str):
    """'FORMAT[:PATH]' -> DataSourceConfig."""
    from harness.config import DataSourceConfig

    fmt, _, path = value.partition(":")
    return DataSourceConfig(format=fmt, path=path)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from harness.stage_commands import load, refuse_options, run_stages, select_scorers

    if args.data:
        refuse_options(args, ("config", "overrides", "scorer", "dry_run"),
                       "with --data (a config's scorers are trained without it)")
        return train_on_data(args)
    refuse_options(args, FILE_OPTIONS, "without --data (the config decides the scorers and their settings)")
    cfg = load(args)
    names = select_scorers(cfg, args.scorer, trained_only=True)
    run_stages(cfg, [f"scorer/{n}" for n in names], args, Console(stderr=True))
    return 0


def train_on_data(args: argparse.Namespace) -> int:
    """--data ... --score-type TYPE --out DIR: one scorer on the user's own data."""
    from rich.console import Console

    from harness.data import load_source, split_pairs
    from harness.errors import UserError
    from harness.scorer_stage import train_scorer

    if not args.score_type or not args.out:
        raise UserError("--data needs --score-type (reward or cost) and --out DIR.")
    defaults = ScorerConfig()
    eval_prompts = 200 if args.eval_prompts is None else args.eval_prompts
    batch_size = defaults.train_batch_size if args.batch_size is None else args.batch_size
    max_length = defaults.train_max_length if args.max_length is None else args.max_length
    split_seed = 0 if args.split_seed is None else args.split_seed
    for name, value in (("eval-prompts", eval_prompts), ("batch-size", batch_size), ("max-length", max_length)):
        if value < 1:
            raise UserError(f"--{name}: must be at least 1.")
    if args.max_pairs is not None and args.max_pairs < 1:
        raise UserError("--max-pairs: must be at least 1.")
    console = Console(stderr=True, highlight=False)
    pairs = []
    for value in args.data:
        result = load_source(parse_data_arg(value))
        console.print(result.report.summary())
        pairs.extend(result.pairs)
    split = split_pairs(pairs, seed=split_seed, scorer_fraction=0.0, eval_prompts=eval_prompts)
    train = split.train_pairs[:args.max_pairs] if args.max_pairs else split.train_pairs
    steps = args.max_steps or (max(1, math.ceil(args.epochs * len(train) / batch_size)) if args.epochs
                               else defaults.train_steps)
    console.print(f"split (seed {split_seed}, by prompt): {len(train)} training pairs, "
                  f"{len(split.eval_pairs)} held-out pairs of {len(split.eval_prompts)} prompts; {steps} steps")
    try:
        scorer = ScorerConfig(name=args.score_type, score_type=args.score_type, train_steps=steps,
                              train_batch_size=batch_size, train_max_length=max_length,
                              train_learning_rate=defaults.train_learning_rate if args.lr is None else args.lr)
    except ValueError as e:
        raise UserError(f"train-scorer: {e}.") from None
    meta = train_scorer(scorer, train, split.eval_pairs, args.out, seed=args.seed or 0, progress=not args.no_progress,
                        overwrite=args.overwrite, bf16=not args.no_bf16)
    h = meta["heldout"]
    out = Console(highlight=False)
    out.print(f"{args.score_type} model -> {args.out}  ({meta['seconds_total']:.0f} s)")
    out.print(f"held-out pairwise accuracy {h['accuracy']:.3f} (95% CI {h['ci_low']:.3f}-{h['ci_high']:.3f}, "
              f"n={h['n']} pairs, ties count as wrong); trained on {len(train)} pairs")
    out.print(f"calibration: offset {meta['offset']:.4f} ({meta['calibration']['rule']})")
    return 0
