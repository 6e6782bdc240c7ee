"""The numbers of a report: leaderboard, paired comparisons against the baseline, ablation tables.

`analyse(run, settings)` returns the plain-JSON body of results.json (schema: docs/results-schema.md).
Per-sample arrays are [S, P, K] (seeds x prompts x samples); samples of a prompt are averaged into
one [S, P] cell before resampling, because a prompt, not a sample, is the independent unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from harness.config import ReportConfig, from_dict
from harness.errors import UserError
from reports.manifest import Manifest, Scorer, Unit
from reports.rundata import RunData, UnitData
from reports.stats import (
    bootstrap_ci,
    holm,
    mcnemar_exact,
    min_detectable_difference,
    paired_bootstrap_pvalue,
    wilcoxon_pvalue,
)

# How a training diagnostic summarises one unit's train_log.jsonl rows (values of the log field, and
# the unit's beta).
TRAIN_AGGREGATES: dict[str, tuple[str, Callable[[list[float], float | None], float | None]]] = {
    "last": ("at the last logged step", lambda v, beta: v[-1]),
    # Per-batch quantities (a step sees batch_size pairs): the run's average says more than one batch.
    "mean": ("mean over all logged steps", lambda v, beta: float(np.mean(v))),
    # rewards/* are beta x (log pi - log pi_ref) of the step's batch, before its update: divided by
    # beta, how far the policy has moved that log-prob from the reference on the same pairs.
    "mean/beta": ("divided by the loss's beta (log pi - log pi_ref on the step's batch), mean over all "
                  "logged steps", lambda v, beta: None if not beta else float(np.mean(v)) / beta),
}
# Training diagnostics: metric key -> (log field, higher_is_better, label, aggregate).
TRAIN_METRICS: dict[str, tuple[str, bool | None, str, str]] = {
    "train.reward_accuracy": ("rewards/accuracies", True, "reward accuracy", "last"),
    "train.margin": ("rewards/margins", True, "reward margin", "last"),
    "train.chosen_logp_drift": ("rewards/chosen", None, "chosen log-prob drift", "mean/beta"),
    "train.rejected_logp_drift": ("rewards/rejected", None, "rejected log-prob drift", "mean/beta"),
    "train.lambda_mean": ("lambda/mean", None, "mean lambda", "mean"),
    "train.log_grad_ratio": ("log_grad_ratio/mean", None, "mean log gradient ratio", "mean"),
    "train.rejected_dominates": ("log_grad_ratio/rejected_dominates", None, "rejected-dominated share", "mean"),
}


@dataclass(frozen=True)
class Settings:
    confidence: float = 0.95
    bootstrap_samples: int = 2000
    seed: int = 0


def settings_for(manifest: Manifest, bootstrap_samples: int | None = None, seed: int | None = None) -> Settings:
    """The run config's `report` section, with command-line values taking precedence."""
    cfg = from_dict(ReportConfig, dict(manifest.config.get("report") or {}), "report")
    return Settings(confidence=cfg.confidence,
                    bootstrap_samples=cfg.bootstrap_samples if bootstrap_samples is None else bootstrap_samples,
                    seed=cfg.seed if seed is None else seed)


def metric_definitions(manifest: Manifest) -> dict[str, dict[str, Any]]:
    """Every leaderboard metric key with its label, direction and meaning."""
    base, ref = manifest.baseline, manifest.reference
    defs: dict[str, dict[str, Any]] = {}
    for s in manifest.scorers:
        better = "higher" if s.score_type == "reward" else "lower"
        defs[f"{s.name}.mean"] = {"label": f"{s.name} mean", "higher_is_better": s.score_type == "reward",
                                  "description": f"mean {s.score_type} score from scorer '{s.name}'"}
        if s.score_type == "cost":
            defs[f"{s.name}.safe_rate"] = {"label": f"{s.name} safe rate", "higher_is_better": True,
                                           "description": f"share of samples with {s.name} <= {s.threshold}"}
        defs[f"{s.name}.win_vs_baseline"] = {
            "label": f"{s.name} win vs {base}", "higher_is_better": True,
            "description": f"P({s.name} is {better} than {base}'s on the same prompt and sample), ties 1/2"}
        if ref is not None:
            defs[f"{s.name}.win_vs_reference"] = {
                "label": f"{s.name} win vs {ref}", "higher_is_better": True,
                "description": f"P({s.name} is {better} than the reference's on the same prompt and sample), ties 1/2"}
    defs["length.mean"] = {"label": "mean length", "higher_is_better": None,
                           "description": "mean completion length in tokens (n_tokens)"}
    for key, (log_field, hib, label, how) in TRAIN_METRICS.items():
        defs[key] = {"label": label, "higher_is_better": hib,
                     "description": f"training diagnostic: '{log_field}' {TRAIN_AGGREGATES[how][0]}, mean over seeds"}
    return defs


def _stack(run: RunData, units: list[Unit], get: Callable[[UnitData], np.ndarray]) -> np.ndarray:
    return np.stack([get(run.units[u.unit]) for u in units])


def _paired_units(manifest: Manifest, variant: str, other: str) -> tuple[list[Unit], list[Unit]]:
    """Units of `variant` and `other` matched by seed; a seedless unit (the reference) matches every seed."""
    a, b = manifest.units_of(variant), manifest.units_of(other)
    if len(b) == 1 and b[0].seed is None:
        return a, b * len(a)
    if len(a) == 1 and a[0].seed is None:
        return a * len(b), b
    seeds = sorted({u.seed for u in a} & {u.seed for u in b})
    if not seeds:
        raise UserError(f"manifest.json: variants {variant!r} and {other!r} share no seed, so they cannot be "
                        f"compared pairwise. Train both with the same seeds.")
    return [u for u in a if u.seed in seeds], [u for u in b if u.seed in seeds]


def _win(a: np.ndarray, b: np.ndarray, scorer: Scorer) -> np.ndarray:
    """1 where a is better than b, 1/2 on ties, else 0 (reward: higher is better, cost: lower)."""
    better = a > b if scorer.score_type == "reward" else a < b
    return better + 0.5 * (a == b)


def _estimate(values: np.ndarray, settings: Settings, higher_is_better: bool | None) -> dict[str, Any]:
    """values [S, P] -> metric entry; the CI resamples seeds (when S > 1) then prompts."""
    est = bootstrap_ci(values, settings.confidence, settings.bootstrap_samples, settings.seed)
    return {"value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high, "n": est.n,
            "n_seeds": int(values.shape[0]), "higher_is_better": higher_is_better}


def _train_value(unit: Unit, log: list[dict[str, Any]], key: str) -> float | None:
    field, _, _, how = TRAIN_METRICS[key]
    values = [row[field] for row in log]
    return None if any(v is None for v in values) else TRAIN_AGGREGATES[how][1](values, unit.params.get("beta"))


def _train_metric(run: RunData, units: list[Unit], key: str, settings: Settings) -> dict[str, Any] | None:
    values = [_train_value(u, run.units[u.unit].train_log, key) for u in units if run.units[u.unit].train_log]
    if not values or any(v is None for v in values):
        return None
    hib = TRAIN_METRICS[key][1]
    if len(values) == 1:
        return {"value": float(values[0]), "ci_low": None, "ci_high": None, "n": 1, "n_seeds": 1,
                "higher_is_better": hib}
    # Seeds are the only independent units here: bootstrap over them.
    entry = _estimate(np.asarray(values, dtype=float)[None, :], settings, hib)
    entry["n_seeds"] = len(values)
    return entry


def variant_metrics(run: RunData, variant: str, settings: Settings) -> dict[str, dict[str, Any] | None]:
    """One leaderboard row: metric key -> entry (None where it does not apply, e.g. baseline vs itself)."""
    m = run.manifest
    units = m.units_of(variant)
    out: dict[str, dict[str, Any] | None] = {}
    for s in m.scorers:
        scores = _stack(run, units, lambda d: d.scores[s.name])
        out[f"{s.name}.mean"] = _estimate(scores.mean(axis=2), settings, s.score_type == "reward")
        if s.score_type == "cost":
            out[f"{s.name}.safe_rate"] = _estimate((scores <= s.threshold).mean(axis=2), settings, True)
        others = [("baseline", m.baseline)] + ([("reference", m.reference)] if m.reference else [])
        for label, other in others:
            if other == variant:
                out[f"{s.name}.win_vs_{label}"] = None
                continue
            ua, ub = _paired_units(m, variant, other)
            a = _stack(run, ua, lambda d: d.scores[s.name])
            b = _stack(run, ub, lambda d: d.scores[s.name])
            out[f"{s.name}.win_vs_{label}"] = _estimate(_win(a, b, s).mean(axis=2), settings, True)
    out["length.mean"] = _estimate(_stack(run, units, lambda d: d.n_tokens).mean(axis=2), settings, None)
    for key in TRAIN_METRICS:
        out[key] = _train_metric(run, units, key, settings)
    return out


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def comparisons(run: RunData, settings: Settings) -> list[dict[str, Any]]:
    """Each variant minus the baseline, per scorer mean (paired bootstrap) and safe rate (exact McNemar),
    with Holm-adjusted p-values across all rows."""
    m = run.manifest
    rows = []
    for variant in m.variants():
        if variant == m.baseline:
            continue
        ua, ub = _paired_units(m, variant, m.baseline)
        for s in m.scorers:
            a = _stack(run, ua, lambda d: d.scores[s.name])
            b = _stack(run, ub, lambda d: d.scores[s.name])
            tests = [(f"{s.name}.mean", a, b, s.score_type == "reward")]
            if s.score_type == "cost":
                tests.append((f"{s.name}.safe_rate", (a <= s.threshold).astype(float),
                              (b <= s.threshold).astype(float), True))
            for metric, xa, xb, hib in tests:
                diffs = (xa - xb).mean(axis=2)  # [S, P]
                est = bootstrap_ci(diffs, settings.confidence, settings.bootstrap_samples, settings.seed)
                per_prompt = diffs.mean(axis=0)
                if metric.endswith(".safe_rate"):
                    test, p = "exact McNemar", mcnemar_exact(xa.ravel() > 0.5, xb.ravel() > 0.5)
                    p_wilcoxon = None
                else:
                    test = "paired bootstrap (seeds then prompts)" if diffs.shape[0] > 1 else "paired bootstrap (prompts)"
                    p = paired_bootstrap_pvalue(diffs, settings.bootstrap_samples, settings.seed)
                    p_wilcoxon = wilcoxon_pvalue(per_prompt)
                sd = float(per_prompt.std(ddof=1)) if per_prompt.size > 1 else float("nan")
                rows.append({
                    "variant": variant, "baseline": m.baseline, "metric": metric,
                    "difference": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high,
                    "n": est.n, "n_seeds": int(diffs.shape[0]), "higher_is_better": hib,
                    "test": test, "p_value": p, "p_wilcoxon": p_wilcoxon,
                    "min_detectable_difference": _finite_or_none(min_detectable_difference(sd, per_prompt.size))
                    if np.isfinite(sd) else None,
                })
    for row, adjusted in zip(rows, holm([r["p_value"] for r in rows])):
        row["p_holm"] = float(adjusted)
    return rows


def _sort_key(value: Any) -> tuple[int, float, str]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def ablations(manifest: Manifest, leaderboard: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Pivot tables over each swept field: columns = the field's values; rows = variants that agree on
    everything else (loss and the other swept fields); one table per (field, metric)."""
    swept = sorted({f for u in manifest.units for f in u.sweep})
    metrics = [k for k in next(iter(leaderboard.values())) if not k.startswith(("train.", "length."))]
    tables = []
    for f in swept:
        variants = [v for v in manifest.variants() if f in manifest.units_of(v)[0].sweep]
        values = sorted({manifest.units_of(v)[0].sweep[f] for v in variants}, key=_sort_key)
        if len(values) < 2:
            continue
        rows: dict[str, dict[str, Any]] = {}
        for v in variants:
            unit = manifest.units_of(v)[0]
            fixed = {k: unit.sweep[k] for k in sorted(unit.sweep) if k != f}
            row_key = repr((unit.loss, sorted(fixed.items())))
            row = rows.setdefault(row_key, {"loss": unit.loss, "fixed": fixed, "variants": [None] * len(values)})
            col = values.index(unit.sweep[f])
            if row["variants"][col] is not None:
                raise UserError(f"manifest.json: variants {row['variants'][col]!r} and {v!r} have the same loss and "
                                f"sweep values; list the field that tells them apart in their 'sweep'.")
            row["variants"][col] = v
        ordered = sorted(rows.values(), key=lambda r: (str(r["loss"]), repr(sorted(r["fixed"].items()))))
        for metric in metrics:
            tables.append({
                "field": f, "values": values, "metric": metric,
                "rows": [{"loss": r["loss"], "fixed": r["fixed"], "variants": r["variants"],
                          "cells": [None if v is None else leaderboard[v][metric] for v in r["variants"]]}
                         for r in ordered],
            })
    return tables


def primary_metric(manifest: Manifest) -> str:
    """The metric that orders the leaderboard: the first reward scorer's mean (else the first cost's safe rate)."""
    reward = [s for s in manifest.scorers if s.score_type == "reward"]
    return f"{reward[0].name}.mean" if reward else f"{manifest.scorers[0].name}.safe_rate"


def analyse(run: RunData, settings: Settings) -> dict[str, Any]:
    """The deterministic body of results.json (everything except provenance and timestamps)."""
    m = run.manifest
    board = {v: variant_metrics(run, v, settings) for v in m.variants()}
    key = primary_metric(m)
    order = sorted(board, key=lambda v: (-board[v][key]["value"], v))
    return {
        "settings": {"confidence": settings.confidence, "bootstrap_samples": settings.bootstrap_samples,
                     "seed": settings.seed, "primary_metric": key},
        "metric_definitions": metric_definitions(m),
        "variants": {v: {"loss": m.units_of(v)[0].loss, "params": m.units_of(v)[0].params,
                         "train": m.units_of(v)[0].train, "sweep": m.units_of(v)[0].sweep,
                         "seeds": [u.seed for u in m.units_of(v)], "units": [u.unit for u in m.units_of(v)]}
                     for v in m.variants()},
        "n_prompts": len(run.prompt_ids),
        "n_samples_per_prompt": run.n_samples,
        "leaderboard": [{"variant": v, "metrics": board[v]} for v in order],
        "comparisons": comparisons(run, settings),
        "ablations": ablations(m, board),
    }
