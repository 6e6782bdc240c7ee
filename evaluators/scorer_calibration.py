"""Calibration and held-out evaluation of a freshly trained Bradley-Terry scorer: the second half of
the scorer stage (harness/scorer_stage.py), run through the saved folder, i.e. exactly as the
scorer will be used.

Calibration, recorded as `offset` in scorer.json and subtracted at scoring time:
- cost trained with safety labels: offset 0 (the classification term already puts the boundary at 0);
- cost without labels: the threshold that best separates the training pairs' chosen responses
  (counted safe) from their rejected ones (counted unsafe), so "cost <= 0" means "on the chosen side";
- reward: none (offset 0): a reward's zero point is arbitrary, only differences between rewards count.

Held-out evaluation: the calibrated scorer's pairwise accuracy on pairs it never saw, with its 95%
CI, and the sign check (evaluators.scorers.evaluate_pairs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from evaluators.scorers import BradleyTerryScorer, evaluate_pairs
from harness.config import ScorerConfig
from harness.io import sha256_json
from harness.records import PreferencePair
from harness.scorer_format import read_scorer_file

# Training pairs scored to calibrate the offset (enough for a stable threshold, cheap on CPU).
CALIBRATION_PAIRS = 512


def best_separating_offset(safe: Sequence[float], unsafe: Sequence[float]) -> float:
    """The threshold t maximising #(safe <= t) + #(unsafe > t); midpoint between neighbouring scores."""
    points = sorted([(v, 0) for v in safe] + [(v, 1) for v in unsafe])
    # Start with t below everything: every unsafe is right, every safe wrong.
    best, best_t, correct = len(unsafe), points[0][0] - 1.0, len(unsafe)
    for i, (value, is_unsafe) in enumerate(points):
        correct += -1 if is_unsafe else 1
        nxt = points[i + 1][0] if i + 1 < len(points) else value + 1.0
        if correct > best and nxt > value:
            best, best_t = correct, (value + nxt) / 2
    return best_t


def calibrate(scorer: BradleyTerryScorer, pairs: Sequence[PreferencePair], labelled: int) -> tuple[float, dict[str, Any]]:
    """(offset, record of the rule) for an uncalibrated scorer trained on `pairs`, `labelled` of which
    carry safety labels: see the module docstring."""
    if scorer.score_type == "reward":
        return 0.0, {"rule": "none: a reward's zero point is arbitrary", "n_pairs": 0}
    if labelled:
        return 0.0, {"rule": "safety labels: the classification term puts the boundary at 0", "n_pairs": labelled}
    sample = list(pairs[:CALIBRATION_PAIRS])
    prompts = [p.prompt for p in sample]
    chosen = scorer.score(prompts, [p.chosen for p in sample])
    rejected = scorer.score(prompts, [p.rejected for p in sample])
    offset = best_separating_offset(chosen, rejected)
    return offset, {"rule": "threshold best separating training chosen (safe) from rejected (unsafe) responses",
                    "n_pairs": len(sample)}


def calibrate_and_evaluate(folder: str | Path, train_pairs: Sequence[PreferencePair],
                           eval_pairs: Sequence[PreferencePair]) -> dict[str, Any]:
    """The scorer.json fields the stage adds to the trained scorer in `folder`: `offset`,
    `calibration`, `heldout` (pairwise accuracy on `eval_pairs` with the offset applied, plus their
    data hash; null without eval pairs) and `sign_inverted`."""
    meta = read_scorer_file(folder, "trained scorer")
    scorer = BradleyTerryScorer(str(folder), ScorerConfig(name=meta["score_type"], score_type=meta["score_type"]))
    offset, rule = calibrate(scorer, train_pairs, meta["training"]["n_safety_labelled"])
    scorer.offset = offset
    fields: dict[str, Any] = {"offset": offset, "calibration": rule, "heldout": None, "sign_inverted": False}
    if eval_pairs:
        heldout = evaluate_pairs(scorer, eval_pairs)
        fields["sign_inverted"] = heldout.pop("sign_inverted")
        heldout["data_sha256"] = sha256_json([p.to_dict() for p in eval_pairs])
        fields["heldout"] = heldout
    return fields
