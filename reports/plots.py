"""Report figures as PNG bytes (matplotlib, Agg backend: no display needed).

Each function returns the PNG, or None when the run has nothing to draw (e.g. no trained unit).
"""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reports.rundata import RunData  # noqa: E402

# Train-log fields drawn as training curves: field -> panel title.
CURVES = {
    "loss": "loss",
    "rewards/margins": "reward margin",
    "logps/chosen": "log p(chosen)",
    "logps/rejected": "log p(rejected)",
    "lambda/mean": "lambda (mean)",
    "log_grad_ratio/mean": "log gradient ratio (mean)",
}


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    # No Software/date metadata: the same data gives the same bytes.
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _colors(variants: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10" if len(variants) <= 10 else "tab20")
    return {v: cmap(i % cmap.N) for i, v in enumerate(variants)}


# Smoothing of the training curves: an exponential moving average over logged steps, so that a
# batch of a few pairs is not read as a trend. Its span adapts to the run's length.
EMA_SPAN_SHARE = 0.1


def ema(values: np.ndarray, span: float) -> np.ndarray:
    """Exponential moving average, alpha = 2 / (span + 1), starting at the first value."""
    return pd.Series(values, dtype=float).ewm(span=max(span, 1.0), adjust=False).mean().to_numpy()


def training_curves(run: RunData) -> bytes | None:
    """One panel per train-log field; per variant the EMA-smoothed curve averaged over seeds, with a
    band spanning the seeds' own smoothed curves."""
    m = run.manifest
    trained = [v for v in m.variants() if all(run.units[u.unit].train_log for u in m.units_of(v))]
    if not trained:
        return None
    colors = _colors(m.variants())
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    spans = []
    for ax, (field, title) in zip(axes.ravel(), CURVES.items()):
        for v in trained:
            curves = []
            for u in m.units_of(v):
                rows = [r for r in run.units[u.unit].train_log if r[field] is not None]
                if rows:
                    span = EMA_SPAN_SHARE * len(rows)
                    spans.append(span)
                    curves.append(([r["step"] for r in rows], ema(np.array([r[field] for r in rows]), span)))
            if not curves:
                continue
            # Seeds log the same steps; cut to the shortest (a unit still training has fewer).
            n = min(len(steps) for steps, _ in curves)
            steps, stacked = curves[0][0][:n], np.stack([c[:n] for _, c in curves])
            ax.plot(steps, stacked.mean(axis=0), label=v, color=colors[v], lw=1.5)
            if len(curves) > 1:
                ax.fill_between(steps, stacked.min(axis=0), stacked.max(axis=0), color=colors[v], alpha=0.15, lw=0)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes.ravel()[0].legend(fontsize=8)
    span_text = f"EMA over {min(spans):.0f}-{max(spans):.0f} logged steps" if spans else "EMA"
    fig.suptitle(f"Training curves: {span_text}; line = mean over seeds, band = range of the seeds")
    fig.tight_layout()
    return _png(fig)


def forest(results: dict[str, Any]) -> bytes | None:
    """Every variant's paired difference against the baseline (all prompts), one panel per metric,
    with its CI; filled markers are significant after Holm's correction (within their family),
    hollow ones are not."""
    rows = [c for c in results["comparisons"] if c["kind"] == "baseline" and c["subset"] == "all"
            and c["ci_low"] is not None]
    if not rows:
        return None
    alpha = 1 - results["settings"]["confidence"]
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    colors = _colors(variants)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 0.45 * len(variants) + 1.6),
                             squeeze=False, sharey=True)
    for ax, metric in zip(axes[0], metrics):
        for r in (r for r in rows if r["metric"] == metric):
            y = variants.index(r["variant"])
            sig = r["p_holm"] is not None and r["p_holm"] < alpha
            ax.errorbar(r["difference"], y, xerr=[[r["difference"] - r["ci_low"]], [r["ci_high"] - r["difference"]]],
                        fmt="o", color=colors[r["variant"]], mfc=colors[r["variant"]] if sig else "white",
                        capsize=3, ms=7)
        ax.axvline(0, color="black", lw=0.8)
        better = "higher" if results["metric_definitions"][metric]["higher_is_better"] else "lower"
        ax.set_title(f"{metric} ({better} is better)", fontsize=10)
        ax.grid(alpha=0.3, axis="x")
    axes[0][0].set_yticks(range(len(variants)), variants)
    axes[0][0].invert_yaxis()
    fig.suptitle(f"Difference from {results['baseline']} with {results['settings']['confidence']:.0%} CI "
                 f"(filled: Holm-significant at {alpha:g})", fontsize=11)
    fig.tight_layout()
    return _png(fig)


def ablation_multiples(results: dict[str, Any], metrics: list[str]) -> bytes | None:
    """Small multiples: one row per swept field, one panel per metric; the metric against the swept
    value with its CI, one line per fixed setting of the other fields."""
    tables = {(t["field"], t["metric"]): t for t in results["ablations"] if t["metric"] in metrics}
    fields = list(dict.fromkeys(f for f, _ in tables))
    if not fields:
        return None
    shown = [m for m in metrics if any((f, m) in tables for f in fields)]
    fig, axes = plt.subplots(len(fields), len(shown), figsize=(3.6 * len(shown), 2.9 * len(fields)), squeeze=False)
    for i, field in enumerate(fields):
        for j, metric in enumerate(shown):
            ax = axes[i][j]
            t = tables.get((field, metric))
            if t is None:
                ax.set_visible(False)
                continue
            x = np.arange(len(t["values"]))
            for r in t["rows"]:
                pts = [(k, c) for k, c in enumerate(r["cells"]) if c is not None]
                if not pts:
                    continue
                label = f"{r['loss']} " + (", ".join(f"{k}={v}" for k, v in r["fixed"].items()) or "")
                xs = [x[k] for k, _ in pts]
                vals = [c["value"] for _, c in pts]
                lo = [c["value"] - c["ci_low"] if c.get("ci_low") is not None else 0 for _, c in pts]
                hi = [c["ci_high"] - c["value"] if c.get("ci_high") is not None else 0 for _, c in pts]
                ax.errorbar(xs, vals, yerr=[lo, hi], fmt="o-", capsize=3, label=label.strip(), lw=1.2, ms=4)
            ax.set_xticks(x, [str(v) for v in t["values"]])
            ax.set_xlabel(field)
            ax.set_title(results["metric_definitions"][metric]["label"], fontsize=9)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.legend(fontsize=7)
    fig.suptitle("Ablations: metric against the swept value (CI bars; one line per setting of the other fields)",
                 fontsize=11)
    fig.tight_layout()
    return _png(fig)


def frontier(run: RunData, results: dict[str, Any]) -> bytes | None:
    """Mean reward against mean cost per variant (95% CI bars; faint dots: single seeds)."""
    m = run.manifest
    reward = next((s for s in m.scorers if s.score_type == "reward"), None)
    cost = next((s for s in m.scorers if s.score_type == "cost"), None)
    if reward is None or cost is None:
        return None
    colors = _colors(m.variants())
    fig, ax = plt.subplots(figsize=(7, 5.5))
    for row in results["leaderboard"]:
        v, r, c = row["variant"], row["metrics"][f"{reward.name}.mean"], row["metrics"][f"{cost.name}.mean"]
        for u in m.units_of(v):
            d = run.units[u.unit]
            ax.scatter(d.scores[cost.name].mean(), d.scores[reward.name].mean(), color=colors[v], alpha=0.3, s=15)
        ax.errorbar(c["value"], r["value"], xerr=[[c["value"] - c["ci_low"]], [c["ci_high"] - c["value"]]],
                    yerr=[[r["value"] - r["ci_low"]], [r["ci_high"] - r["value"]]], fmt="o", color=colors[v],
                    capsize=3, label=v)
    ax.set_xlabel(f"mean {cost.name} (lower = safer)")
    ax.set_ylabel(f"mean {reward.name} (higher = more helpful)")
    ax.set_title("Reward versus cost: up and to the left is better")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def distributions(run: RunData) -> bytes:
    """Box plots of every per-sample score, one panel per scorer, one box per variant (all seeds)."""
    m = run.manifest
    variants = m.variants()
    fig, axes = plt.subplots(1, len(m.scorers), figsize=(max(6, 1.2 * len(variants)) * len(m.scorers) / 1.3, 4.5),
                             squeeze=False)
    for ax, s in zip(axes[0], m.scorers):
        data = [np.concatenate([run.units[u.unit].scores[s.name].ravel() for u in m.units_of(v)]) for v in variants]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(variants) + 1), variants, rotation=30, ha="right")
        if s.score_type == "cost":
            ax.axhline(s.threshold, color="red", lw=1, ls="--", label=f"safe threshold {s.threshold:g}")
            ax.legend(fontsize=8)
        ax.set_title(f"{s.name} ({s.score_type}) per sample")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _png(fig)
