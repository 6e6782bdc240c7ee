"""The scorer stage, in one place for `bdpo run` and `bdpo train-scorer`: train a Bradley-Terry
reward or cost model (trainers/scorer_training.py), then calibrate it and measure its held-out
accuracy through the saved folder (evaluators/scorer_calibration.py), all in a temporary folder
that is moved onto the output only when complete.

A roof module (like harness/pipeline.py): it imports both sides, which never import each other.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from harness.config import ScorerConfig
from harness.io import atomic_dir
from harness.records import PreferencePair
from harness.scorer_format import write_scorer_file


def train_scorer(s: ScorerConfig, pairs: Sequence[PreferencePair], eval_pairs: Sequence[PreferencePair],
                 out_dir: str | Path, *, seed: int, progress: bool = False, overwrite: bool = False,
                 bf16: bool | None = None) -> dict[str, Any]:
    """Train the scorer `s` (its score_type and train_* settings) on `pairs`, calibrate it, measure its
    accuracy on `eval_pairs` (none: no held-out record) and move it into `out_dir`; return its scorer.json.
    An existing non-empty `out_dir` is refused unless `overwrite`."""
    from evaluators.scorer_calibration import calibrate_and_evaluate
    from trainers.scorer_training import train_bt_scorer

    started = time.time()
    with atomic_dir(out_dir, overwrite) as tmp:
        meta = train_bt_scorer(pairs, s.score_type, tmp, max_steps=s.train_steps, batch_size=s.train_batch_size,
                               lr=s.train_learning_rate, max_length=s.train_max_length, seed=seed, progress=progress,
                               bf16=bf16, backbone=s.train_backbone)
        meta.update(calibrate_and_evaluate(tmp, pairs, eval_pairs))
        meta["seconds_total"] = round(time.time() - started, 1)
        write_scorer_file(tmp, meta)
    return meta
