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


def training_curves(run: RunData) -> bytes | None:
    """One panel per train-log field; one line per variant (mean over seeds at each logged step)."""
    m = run.manifest
    trained = [v for v in m.variants() if all(run.units[u.unit].train_log for u in m.units_of(v))]
    if not trained:
        return None
    colors = _colors(m.variants())
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (field, title) in zip(axes.ravel(), CURVES.items()):
        for v in trained:
            by_step: dict[float, list[float]] = {}
            for u in m.units_of(v):
                for row in run.units[u.unit].train_log:
                    if row[field] is not None:
                        by_step.setdefault(row["step"], []).append(row[field])
            if by_step:
                steps = sorted(by_step)
                ax.plot(steps, [np.mean(by_step[s]) for s in steps], label=v, color=colors[v], lw=1.5)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes.ravel()[0].legend(fontsize=8)
    fig.suptitle("Training curves (mean over seeds)")
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
