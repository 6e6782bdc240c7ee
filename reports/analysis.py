"""The numbers of a report: positive control, primary comparison, leaderboard, paired comparisons,
per-source subsets and ablation tables.

`analyse(run, settings)` returns the plain-JSON body of results.json (schema: docs/results-schema.md;
the statistics: docs/statistics.md). Per-sample arrays are [S, P, K] (seeds x prompts x samples);
samples of a prompt are averaged into one [S, P] cell, and seeds and prompts are crossed (every
seed answers every prompt), so intervals and tests use the crossed model of reports/stats.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from harness.config import PrimaryConfig, ReportConfig, from_dict
from harness.errors import UserError
from reports.manifest import Manifest, Scorer, Unit
from reports.rundata import RunData, UnitData
from reports.stats import (
    Crossed,
    crossed_bootstrap_means,
    crossed_mean,
    holm,
    mcnemar_exact,
    min_detectable_difference,
    paired_t_pvalue,
    per_seed_t,
    percentile_ci,
    wilcoxon_pvalue,
)

ALL = "all"
# Held-out implicit-reward metrics (heldout/<unit>.jsonl): key -> (row field, label, description).
HELDOUT_METRICS: dict[str, tuple[str, str, str]] = {
    "heldout.accuracy": ("correct", "held-out implicit-reward accuracy",
                         "share of the eval split's preference pairs whose implicit reward "
                         "beta (log pi - log pi_ref) ranks chosen above rejected (ties 1/2; the reference: 0.5)"),
    "heldout.margin": ("margin", "held-out implicit-reward margin",
                       "mean of beta ((log pi - log pi_ref)(chosen) - (log pi - log pi_ref)(rejected)) on the "
                       "eval split's preference pairs (the reference: 0)"),
}
# How a training diagnostic summarises one unit's train_log.jsonl rows (values of the log field, and
# the unit's beta).
TRAIN_AGGREGATES: dict[str, tuple[str, Callable[[list[float], float | None], float | None]]] = {
    # Per-batch quantities (a step sees batch_size pairs): the run's average says more than one batch.
    "mean": ("mean over all logged steps", lambda v, beta: float(np.mean(v))),
    # rewards/* are beta x (log pi - log pi_ref) of the step's batch, before its update: divided by
    # beta, how far the policy has moved that log-prob from the reference on the same pairs.
    "mean/beta": ("divided by the loss's beta (log pi - log pi_ref on the step's batch), mean over all "
                  "logged steps", lambda v, beta: None if not beta else float(np.mean(v)) / beta),
}
# Training diagnostics, one value per seed: metric key -> (log field, higher_is_better, label, aggregate).
# (The last batch's reward accuracy is 4 pairs of noise: held-out accuracy replaces it.)
TRAIN_METRICS: dict[str, tuple[str, bool | None, str, str]] = {
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
    primary: PrimaryConfig | None = None


def settings_for(manifest: Manifest, bootstrap_samples: int | None = None, seed: int | None = None) -> Settings:
    """The run config's `report` section, with command-line values taking precedence."""
    cfg = from_dict(ReportConfig, dict(manifest.config.get("report") or {}), "report")
    return Settings(confidence=cfg.confidence,
                    bootstrap_samples=cfg.bootstrap_samples if bootstrap_samples is None else bootstrap_samples,
                    seed=cfg.seed if seed is None else seed, primary=cfg.primary)


def metric_definitions(run: RunData) -> dict[str, dict[str, Any]]:
    """Every leaderboard metric key with its label, direction and meaning."""
    manifest = run.manifest
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
            "description": f"P({s.name} is {better} than {base}'s on the same seed, prompt and sample), ties "
                           f"count 1/2; the entry also gives the strict win, tie and loss shares"}
        if ref is not None:
            defs[f"{s.name}.win_vs_reference"] = {
                "label": f"{s.name} win vs {ref}", "higher_is_better": True,
                "description": f"P({s.name} is {better} than the reference's on the same prompt and sample), ties "
                               f"count 1/2; the entry also gives the strict win, tie and loss shares"}
    if run.has_heldout:
        for key, (_, label, description) in HELDOUT_METRICS.items():
            defs[key] = {"label": label, "higher_is_better": True, "description": description}
    defs["length.mean"] = {"label": "mean length", "higher_is_better": None,
                           "description": "mean completion length in tokens (n_tokens)"}
    for key, (log_field, hib, label, how) in TRAIN_METRICS.items():
        defs[key] = {"label": label, "higher_is_better": hib,
                     "description": f"training diagnostic: '{log_field}' {TRAIN_AGGREGATES[how][0]}; one value per "
                                    f"seed, mean with a t interval over seeds"}
    return defs


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


class Cells:
    """Per-unit cell values of every metric on one subset of prompts (or eval pairs for held-out)."""

    def __init__(self, run: RunData, subset: str) -> None:
        self.run = run
        self.subset = subset
        self.prompts = np.array([subset == ALL or s == subset for s in run.prompt_sources])
        self.pairs = None if not run.has_heldout else np.array(
            [subset == ALL or s == subset for s in run.heldout_sources])

    def samples(self, unit: UnitData, metric: str) -> np.ndarray:
        """[P, K] per-sample values of a scorer metric (`<s>.mean`, `<s>.safe_rate`) or `length.mean`."""
        if metric == "length.mean":
            return unit.n_tokens[self.prompts]
        name, kind = metric.rsplit(".", 1)
        scores = unit.scores[name][self.prompts]
        if kind == "safe_rate":
            return (scores <= self.run.manifest.scorer(name).threshold).astype(float)
        return scores

    def matrix(self, units: list[Unit], metric: str) -> np.ndarray:
        """[S, P] cells of `metric` for these units (one row per unit)."""
        if metric in HELDOUT_METRICS:
            field = HELDOUT_METRICS[metric][0]
            return np.stack([self.run.heldout_row(u, field)[self.pairs] for u in units])
        return np.stack([self.samples(self.run.units[u.unit], metric).mean(axis=1) for u in units])

    def win(self, units: list[Unit], others: list[Unit], scorer: Scorer) -> dict[str, np.ndarray]:
        """[S, P] shares of strict wins, ties and losses of `units` against `others` (seed-paired)."""
        a = np.stack([self.samples(self.run.units[u.unit], f"{scorer.name}.mean") for u in units])
        b = np.stack([self.samples(self.run.units[u.unit], f"{scorer.name}.mean") for u in others])
        better = a > b if scorer.score_type == "reward" else a < b
        tie = a == b
        return {"win": better.mean(axis=2), "tie": tie.mean(axis=2), "loss": (~better & ~tie).mean(axis=2)}


def _entry(values: np.ndarray, settings: Settings, higher_is_better: bool | None) -> dict[str, Any]:
    """values [S, P] -> metric entry: mean, crossed t interval, n, per-seed means."""
    est = crossed_mean(values, settings.confidence)
    return {"value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high, "n": est.n_prompts,
            "n_seeds": est.n_seeds, "higher_is_better": higher_is_better,
            "per_seed": [float(x) for x in values.mean(axis=1)]}


def _train_value(unit: Unit, log: list[dict[str, Any]], key: str) -> float | None:
    field, _, _, how = TRAIN_METRICS[key]
    values = [row[field] for row in log]
    return None if any(v is None for v in values) else TRAIN_AGGREGATES[how][1](values, unit.params.get("beta"))


def _train_metric(run: RunData, units: list[Unit], key: str, settings: Settings) -> dict[str, Any] | None:
    values = [_train_value(u, run.units[u.unit].train_log, key) for u in units if run.units[u.unit].train_log]
    if not values or any(v is None for v in values):
        return None
    est = per_seed_t(values, settings.confidence)
    # One value per seed: a t interval over seeds (none with one seed), and the range, labelled as such.
    return {"value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high, "n": len(values),
            "n_seeds": len(values), "higher_is_better": TRAIN_METRICS[key][1], "per_seed": list(est.values),
            "min": est.minimum, "max": est.maximum}


def variant_metrics(cells: Cells, variant: str, settings: Settings, train: bool) -> dict[str, dict[str, Any] | None]:
    """One leaderboard row on a subset: metric key -> entry (None where it does not apply)."""
    run, m = cells.run, cells.run.manifest
    units = m.units_of(variant)
    out: dict[str, dict[str, Any] | None] = {}
    for s in m.scorers:
        out[f"{s.name}.mean"] = _entry(cells.matrix(units, f"{s.name}.mean"), settings, s.score_type == "reward")
        if s.score_type == "cost":
            out[f"{s.name}.safe_rate"] = _entry(cells.matrix(units, f"{s.name}.safe_rate"), settings, True)
        others = [("baseline", m.baseline)] + ([("reference", m.reference)] if m.reference else [])
        for label, other in others:
            if other == variant:
                out[f"{s.name}.win_vs_{label}"] = None
                continue
            shares = cells.win(*_paired_units(m, variant, other), s)
            entry = _entry(shares["win"] + 0.5 * shares["tie"], settings, True)
            entry.update({k: float(v.mean()) for k, v in shares.items()})
            out[f"{s.name}.win_vs_{label}"] = entry
    if run.has_heldout:
        for key in HELDOUT_METRICS:
            out[key] = _entry(cells.matrix(units, key), settings, True)
    out["length.mean"] = _entry(cells.matrix(units, "length.mean"), settings, None)
    if train:
        for key in TRAIN_METRICS:
            out[key] = _train_metric(run, units, key, settings)
    return out


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def compare(cells: Cells, variant: str, other: str, kind: str, metric: str, settings: Settings,
            higher_is_better: bool) -> dict[str, Any]:
    """variant minus other on one metric and subset: difference, crossed interval and t test, the
    secondary analytic tests, the minimum detectable difference, per-seed differences."""
    ua, ub = _paired_units(cells.run.manifest, variant, other)
    diffs = cells.matrix(ua, metric) - cells.matrix(ub, metric)  # [S, P]
    est: Crossed = crossed_mean(diffs, settings.confidence)
    per_prompt = diffs.mean(axis=0)
    boot = percentile_ci(crossed_bootstrap_means(diffs, settings.bootstrap_samples, settings.seed),
                         settings.confidence)
    row = {
        "variant": variant, "against": other, "kind": kind, "subset": cells.subset, "metric": metric,
        "difference": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high,
        "n": est.n_prompts, "n_seeds": est.n_seeds, "higher_is_better": higher_is_better,
        "per_seed": [float(x) for x in diffs.mean(axis=1)],
        "test": "crossed t (seeds x prompts)" if est.n_seeds > 1 else "paired t (prompts)",
        "p_value": est.p_value, "df": _finite_or_none(est.df), "se": _finite_or_none(est.se),
        "variance": {"seed": est.var_seed, "prompt": est.var_prompt, "residual": est.var_residual},
        "p_t_prompts": paired_t_pvalue(per_prompt), "p_wilcoxon": wilcoxon_pvalue(per_prompt),
        "p_mcnemar": None, "bootstrap_ci": [boot[0], boot[1]],
        "min_detectable_difference": _finite_or_none(min_detectable_difference(est.se, est.df, 1 - settings.confidence))
        if est.p_value is not None else None,
    }
    if metric.endswith(".safe_rate"):
        # Secondary: treats every seed x prompt x sample cell as an independent pair (no seed variance).
        a = np.stack([cells.samples(cells.run.units[u.unit], metric) for u in ua])
        b = np.stack([cells.samples(cells.run.units[u.unit], metric) for u in ub])
        row["p_mcnemar"] = mcnemar_exact(a.ravel() > 0.5, b.ravel() > 0.5)
    return row


def matched_arms(manifest: Manifest) -> dict[str, str]:
    """Variant -> the variant with the baseline's loss trained with the same shared settings, when that
    is not the baseline itself (e.g. bdpo-beta1 -> dpo-beta1): compares losses at a swept setting."""
    base_loss = manifest.units_of(manifest.baseline)[0].loss
    arms = {}
    for v in manifest.variants():
        unit = manifest.units_of(v)[0]
        if unit.loss in (None, base_loss):
            continue
        for w in manifest.variants():
            other = manifest.units_of(w)[0]
            if w == manifest.baseline or other.loss != base_loss:
                continue
            shared = (set(unit.sweep) & set(other.sweep)) - {"loss"}
            train = {k for k in set(unit.sweep) | set(other.sweep) if k.startswith("train.")}
            if shared and all(unit.sweep.get(k) == other.sweep.get(k) for k in shared | train):
                arms[v] = w
    return arms


def comparison_plan(run: RunData) -> list[tuple[str, str, str, str, bool]]:
    """(variant, against, kind, metric, higher_is_better) of every comparison, on each subset."""
    m = run.manifest
    metrics = [(f"{s.name}.mean", s.score_type == "reward") for s in m.scorers]
    metrics += [(f"{s.name}.safe_rate", True) for s in m.scorers if s.score_type == "cost"]
    if run.has_heldout:
        metrics += [(k, True) for k in HELDOUT_METRICS]
    trained = [v for v in m.variants() if v != m.reference]
    plan = []
    for v in m.variants():
        if v != m.baseline:
            plan += [(v, m.baseline, "baseline", k, hib) for k, hib in metrics]
    for v, w in matched_arms(m).items():
        plan += [(v, w, "matched", k, hib) for k, hib in metrics]
    if m.reference is not None:
        # Every trained variant against the untrained reference (the baseline's is the positive control).
        plan += [(v, m.reference, "reference", k, hib) for v in trained for k, hib in metrics
                 if k not in HELDOUT_METRICS]
    return plan


def comparisons(run: RunData, subsets: dict[str, Cells], settings: Settings) -> list[dict[str, Any]]:
    """Every planned comparison on every subset. The pre-registered primary one (report.primary) is
    its own family; every other row is exploratory, Holm-adjusted across all exploratory rows."""
    rows = [compare(cells, v, w, kind, metric, settings, hib)
            for cells in subsets.values() for v, w, kind, metric, hib in comparison_plan(run)]
    p = settings.primary
    for row in rows:
        is_primary = (p is not None and row["kind"] == "baseline" and row["variant"] == p.variant
                      and row["metric"] == p.metric and row["subset"] == p.subset)
        row["role"] = "primary" if is_primary else "exploratory"
    for role in ("primary", "exploratory"):
        family = [r for r in rows if r["role"] == role and r["p_value"] is not None]
        for row, adjusted in zip(family, holm([r["p_value"] for r in family])):
            row["p_holm"] = float(adjusted)
    for row in rows:
        row.setdefault("p_holm", None)
    return rows


def positive_control(run: RunData, subsets: dict[str, Cells], rows: list[dict[str, Any]],
                     settings: Settings) -> dict[str, Any]:
    """Did the baseline move detectably from the untrained reference? On held-out implicit-reward
    accuracy (against 0.5, the reference's by definition: its implicit reward is 0) and on every
    scorer metric (baseline minus reference, from `rows`). Per subset."""
    m = run.manifest
    alpha = 1 - settings.confidence
    out: dict[str, Any] = {}
    for name, cells in subsets.items():
        entry: dict[str, Any] = {"heldout": None, "scorers": []}
        if run.has_heldout:
            acc = cells.matrix(m.units_of(m.baseline), "heldout.accuracy")
            est = crossed_mean(acc - 0.5, settings.confidence)
            entry["heldout"] = {"accuracy": est.value + 0.5, "ci_low": None if est.ci_low is None else est.ci_low + 0.5,
                                "ci_high": None if est.ci_high is None else est.ci_high + 0.5,
                                "p_value": est.p_value, "n": est.n_prompts, "n_seeds": est.n_seeds,
                                "per_seed": [float(x) for x in acc.mean(axis=1)],
                                "moved": est.p_value is not None and est.p_value < alpha}
        if m.reference is not None:
            for r in rows:
                if r["kind"] == "reference" and r["variant"] == m.baseline and r["subset"] == name:
                    entry["scorers"].append({k: r[k] for k in ("metric", "difference", "ci_low", "ci_high",
                                                               "p_value", "per_seed")}
                                            | {"moved": r["p_value"] is not None and r["p_value"] < alpha})
        moved_on = [e["metric"] for e in entry["scorers"] if e["moved"]]
        if entry["heldout"] is not None and entry["heldout"]["moved"]:
            moved_on.insert(0, "heldout.accuracy")
        entry["moved_on"] = moved_on
        entry["measured"] = entry["heldout"] is not None or bool(entry["scorers"])
        out[name] = entry
    return out


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


def check_primary(run: RunData, primary: PrimaryConfig) -> None:
    """The registered comparison must exist in this run (the config check covers runs, this one
    covers a report rebuilt from a results folder)."""
    m = run.manifest
    metrics = [k for _, _, kind, k, _ in comparison_plan(run) if kind == "baseline"]
    if primary.variant not in m.variants() or primary.variant == m.baseline:
        raise UserError(f"config.yaml: field 'report.primary.variant': {primary.variant!r} is not a variant compared "
                        f"with the baseline {m.baseline!r} (variants: {', '.join(m.variants())}).")
    if primary.metric not in metrics:
        raise UserError(f"config.yaml: field 'report.primary.metric': {primary.metric!r} is not measured in this run "
                        f"(one of: {', '.join(dict.fromkeys(metrics))}).")
    if primary.subset != ALL and primary.subset not in run.prompt_sources:
        raise UserError(f"config.yaml: field 'report.primary.subset': no evaluation prompt comes from source "
                        f"{primary.subset!r} (sources: {', '.join(sorted(set(run.prompt_sources)))}, or 'all').")


def analyse(run: RunData, settings: Settings) -> dict[str, Any]:
    """The deterministic body of results.json (everything except provenance and timestamps)."""
    m = run.manifest
    if settings.primary is not None:
        check_primary(run, settings.primary)
    sources = sorted(set(run.prompt_sources))
    subsets = {ALL: Cells(run, ALL)}
    if len(sources) > 1:
        subsets.update({s: Cells(run, s) for s in sources})
    board = {v: variant_metrics(subsets[ALL], v, settings, train=True) for v in m.variants()}
    key = primary_metric(m)
    order = sorted(board, key=lambda v: (-board[v][key]["value"], v))
    rows = comparisons(run, subsets, settings)
    primary = next((r for r in rows if r["role"] == "primary"), None)
    return {
        "settings": {"confidence": settings.confidence, "bootstrap_samples": settings.bootstrap_samples,
                     "seed": settings.seed, "primary_metric": key,
                     "primary": None if settings.primary is None else
                     {"variant": settings.primary.variant, "metric": settings.primary.metric,
                      "subset": settings.primary.subset}},
        "metric_definitions": metric_definitions(run),
        "variants": {v: {"loss": m.units_of(v)[0].loss, "params": m.units_of(v)[0].params,
                         "train": m.units_of(v)[0].train, "sweep": m.units_of(v)[0].sweep,
                         "seeds": [u.seed for u in m.units_of(v)], "units": [u.unit for u in m.units_of(v)]}
                     for v in m.variants()},
        "n_prompts": len(run.prompt_ids),
        "n_samples_per_prompt": run.n_samples,
        "n_heldout_pairs": len(run.heldout_ids) if run.has_heldout else None,
        "positive_control": positive_control(run, subsets, rows, settings),
        "primary": primary,
        "leaderboard": [{"variant": v, "metrics": board[v]} for v in order],
        "subsets": {name: {"n_prompts": int(cells.prompts.sum()),
                           "n_heldout_pairs": None if cells.pairs is None else int(cells.pairs.sum()),
                           "leaderboard": {v: variant_metrics(cells, v, settings, train=False) for v in order}}
                    for name, cells in subsets.items() if name != ALL},
        "comparisons": rows,
        "ablations": ablations(m, board),
    }
