"""Train the first variant of a config, seed `seeds[0]`, with `trainers.trainer.train_policy` into
OUT/<variant>-seed<seed>: the unit that tests/test_multiprocess.py launches under `accelerate launch`
(every rank runs this script). Usage: python -m tests.train_unit CONFIG OUT [KEY=VALUE ...]"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from harness.config import load_config, variant_train_config
from harness.data import load_sources, split_data
from trainers.trainer import train_policy


def main(config: str, out: str, *overrides: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(config, list(overrides))
    pairs, _ = load_sources(cfg.data)
    variant, seed = cfg.variants[0], cfg.seeds[0]
    train_policy(cfg.model, variant_train_config(cfg, variant), variant, split_data(pairs, cfg.data).train_pairs,
                 Path(out) / f"{variant.name}-seed{seed}", seed, Path(out) / ".cache", progress=False)


if __name__ == "__main__":
    main(*sys.argv[1:])
