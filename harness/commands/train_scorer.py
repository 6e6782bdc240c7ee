"""`bdpo train-scorer`: train the project's own Bradley-Terry reward or cost model, offline."""

from __future__ import annotations

import argparse
import math

NAME = "train-scorer"
HELP = ("Train a small Bradley-Terry reward or cost model (MiniLM backbone, offline) on preference data "
        "and report its held-out pairwise accuracy with a 95% CI.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", action="append", required=True, metavar="FORMAT[:PATH]",
                        help="preference data, e.g. hh-rlhf:path/helpful-base/test.jsonl.gz or builtin-safety "
                             "(repeat to combine sources; `bdpo ls data` lists formats)")
    parser.add_argument("--score-type", choices=["reward", "cost"], required=True,
                        help="reward: chosen scores higher (more helpful); cost: chosen (safer) scores lower")
    parser.add_argument("--out", required=True, help="folder to write the scorer to (Hugging Face format + scorer.json)")
    parser.add_argument("--eval-prompts", type=int, default=200,
                        help="held-out prompts (with all their pairs) for the pairwise accuracy; never trained on")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the prompt-disjoint held-out split")
    parser.add_argument("--max-pairs", type=int, default=None, help="train on at most this many pairs (after the split)")
    parser.add_argument("--epochs", type=float, default=1.0, help="passes over the training pairs (sets --max-steps)")
    parser.add_argument("--max-steps", type=int, default=None, help="optimiser steps (overrides --epochs)")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per step")
    parser.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate (linear warm-up and decay)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per (prompt, response); the start is cut")
    parser.add_argument("--seed", type=int, default=0, help="training seed (initialisation, batch order)")
    parser.add_argument("--no-bf16", action="store_true", help="train in float32 instead of bfloat16 autocast")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")


def parse_data_arg(value: str):
    """'FORMAT[:PATH]' -> DataSourceConfig."""
    from harness.config import DataSourceConfig

    fmt, _, path = value.partition(":")
    return DataSourceConfig(format=fmt, path=path)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from harness.data import load_source, split_pairs
    from harness.errors import UserError
    from trainers.scorer_training import train_bt_scorer

    for name in ("eval_prompts", "batch_size", "max_length"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}: must be at least 1.")
    if args.max_pairs is not None and args.max_pairs < 1:
        raise UserError("--max-pairs: must be at least 1.")
    console = Console(stderr=True, highlight=False)
    pairs = []
    for value in args.data:
        result = load_source(parse_data_arg(value))
        console.print(result.report.summary())
        pairs.extend(result.pairs)
    split = split_pairs(pairs, seed=args.split_seed, scorer_fraction=0.0, eval_prompts=args.eval_prompts)
    train = split.train_pairs[:args.max_pairs] if args.max_pairs else split.train_pairs
    steps = args.max_steps or max(1, math.ceil(args.epochs * len(train) / args.batch_size))
    console.print(f"split (seed {args.split_seed}, by prompt): {len(train)} training pairs, "
                  f"{len(split.eval_pairs)} held-out pairs of {len(split.eval_prompts)} prompts; {steps} steps")
    meta = train_bt_scorer(train, args.score_type, args.out, max_steps=steps, batch_size=args.batch_size, lr=args.lr,
                           max_length=args.max_length, seed=args.seed, eval_pairs=split.eval_pairs, progress=True,
                           bf16=not args.no_bf16, overwrite=args.overwrite)
    h = meta["heldout"]
    out = Console(highlight=False)
    out.print(f"{args.score_type} model -> {args.out}  ({meta['seconds_total']:.0f} s)")
    out.print(f"held-out pairwise accuracy {h['accuracy']:.3f} (95% CI {h['ci_low']:.3f}-{h['ci_high']:.3f}, "
              f"n={h['n']} pairs, ties count as wrong); trained on {len(train)} pairs")
    out.print(f"calibration: offset {meta['offset']:.4f} ({meta['calibration']['rule']})")
    return 0
