"""The LLM judge's win rate against the baseline, beside the scorers' win rates.

Reads `judgments/<unit>.jsonl` (rows: harness/records.py JUDGMENT_FIELDS; written by the pipeline's
`judge/<unit>` stages when the run config has a `judge` section). Per variant, the pair scores of
its units (1 win, 0 loss, 1/2 tie, both orders averaged) are averaged over a prompt's samples into
one [S, P] cell, as every other metric, and resampled the same way (seeds, then prompts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import UserError
from harness.io import iter_jsonl, require_finite, sha256_file
from harness.records import JUDGMENT_FIELDS, require_fields
from reports.manifest import Manifest
from reports.stats import crossed_mean

METRIC = "judge.win_vs_baseline"
VERDICT_FIELDS = ("verdict_unit_first", "verdict_baseline_first")


def read_judgments(path: Path, prompt_ids: list[str], n_samples: int) -> tuple[np.ndarray, int, int, int]:
    """(pair scores [P, K], ties, invalid answers, pairs) of one unit; every (prompt, sample) of the
    run's grid must be judged once."""
    if not path.is_file():
        raise UserError(f"{path}: missing; the run config has a judge. Rerun `bdpo run` to judge this unit.")
    index = {pid: i for i, pid in enumerate(prompt_ids)}
    scores = np.full((len(prompt_ids), n_samples), np.nan)
    ties = invalid = 0
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        require_fields(row, JUDGMENT_FIELDS, where)
        i, k = index.get(row["prompt_id"]), row["sample_idx"]
        if i is None or not isinstance(k, int) or not 0 <= k < n_samples or not np.isnan(scores[i, k]):
            raise UserError(f"{where}: prompt_id {row['prompt_id']!r} sample_idx {k!r} is not in the run's "
                            "generations, or is judged twice. Rerun the judge stage.")
        score = require_finite(row["score"], f"{where}: field 'score'")
        if not 0 <= score <= 1:
            raise UserError(f"{where}: field 'score': {score} is not in [0, 1].")
        scores[i, k] = score
        ties += score == 0.5
        invalid += sum(row[f] == "invalid" for f in VERDICT_FIELDS)
    if np.isnan(scores).any():
        i, k = map(int, np.argwhere(np.isnan(scores))[0])
        raise UserError(f"{path}: no row for prompt_id {prompt_ids[i]!r} sample_idx {k}. Rerun the judge stage.")
    return scores, ties, invalid, scores.size


def judge_win_rates(root: Path, manifest: Manifest, prompt_ids: list[str], n_samples: int,
                    confidence: float) -> tuple[dict[str, dict[str, Any] | None], dict[str, str]]:
    """Per variant, the judge's win-rate entry (None for the baseline and for variants with no
    judged unit), and the sha256 of every judgments file read."""
    entries: dict[str, dict[str, Any] | None] = {}
    hashes: dict[str, str] = {}
    base_seeds = {u.seed for u in manifest.units_of(manifest.baseline)}
    for variant in manifest.variants():
        units = [u for u in manifest.units_of(variant)
                 if variant != manifest.baseline and (u.seed is None or u.seed in base_seeds)]
        if not units:
            entries[variant] = None
            continue
        cells, every, ties, invalid, pairs = [], [], 0, 0, 0
        for u in units:
            path = root / "judgments" / f"{u.unit}.jsonl"
            scores, t, bad, n = read_judgments(path, prompt_ids, n_samples)
            cells.append(scores.mean(axis=1))
            every.append(scores.ravel())
            ties, invalid, pairs = ties + t, invalid + bad, pairs + n
            hashes[str(path.relative_to(root))] = sha256_file(path)
        # The crossed seeds x prompts interval, as for the scorers' win rates (docs/statistics.md).
        est = crossed_mean(np.stack(cells), confidence)
        entries[variant] = {"value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high, "n": est.n_prompts,
                            "n_seeds": len(cells), "higher_is_better": True, "ties": ties / pairs,
                            # Behind the win rate, as for the scorers' (a pair's score averages both orders).
                            "win": float(np.mean(np.concatenate(every) > 0.5)),
                            "tie": float(np.mean(np.concatenate(every) == 0.5)),
                            "loss": float(np.mean(np.concatenate(every) < 0.5)),
                            "invalid_answers": invalid, "n_pairs": pairs}
    return entries, hashes


def add_judge(results: dict[str, Any], root: Path, manifest: Manifest, prompt_ids: list[str], n_samples: int) -> None:
    """Put the judge's win rate into results.json's leaderboard rows, metric definitions and inputs,
    when the run config has a judge (nothing otherwise)."""
    judge = manifest.config.get("judge")
    if not judge:
        return
    s = results["settings"]
    entries, hashes = judge_win_rates(root, manifest, prompt_ids, n_samples, s["confidence"])
    results["metric_definitions"][METRIC] = {
        "label": f"judge win vs {manifest.baseline}", "higher_is_better": True,
        "description": f"pairwise LLM judge ({judge['path']}): P(judged better than {manifest.baseline}'s reply on "
                       "the same prompt and sample), asked in both orders, ties and position-split verdicts 1/2"}
    for row in results["leaderboard"]:
        row["metrics"][METRIC] = entries[row["variant"]]
    results["inputs"].update(hashes)
