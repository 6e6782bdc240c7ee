"""Report of the synthetic experiment, built from its results.json only.

`write_synthetic_report(results_json)` writes next to it: `table.md` (per mask rate and method:
utility, regret, paired difference to the baseline, OOD mass and overestimation, mean [95% CI] over
seeds; then which methods beat the baseline in utility, at which mask rate) and three PNG plots: `utility_curves.png` (true utility vs training step, one panel per
mask rate), `ood_mass.png` (probability mass on masked cells vs step) and `grad_ratio_hist.png`
(distribution of log(|dL/dpi_w| / |dL/dpi_l|) over training). Plots use matplotlib's Agg canvas
directly: no display, no global pyplot state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness.io import atomic_path, atomic_write_text, read_json

TABLE_FILE = "table.md"
UTILITY_PLOT = "utility_curves.png"
OOD_PLOT = "ood_mass.png"
GRAD_RATIO_PLOT = "grad_ratio_hist.png"

COLUMNS = ("mask", "method", "utility", "regret", "Δ utility vs {b}", "OOD mass", "Δ OOD mass vs {b}",
           "OOD overestimation")
# The terminal's narrower table (fits 80 columns): no regret (optimum - utility) or overestimation,
# short headers; its title says what Δ is.
COMPACT = {"mask": "mask", "method": "method", "utility": "utility", "Δ utility vs {b}": "Δ utility",
           "OOD mass": "OOD mass", "Δ OOD mass vs {b}": "Δ OOD mass"}


def fmt(stat: dict[str, Any] | None, digits: int = 3, pm: bool = False) -> str:
    """'mean [low, high]' (or 'mean ±half-width' with pm), the mean alone without a CI, '–' when n/a."""
    if stat is None:
        return "–"
    if stat["ci_low"] is None:
        return f"{stat['mean']:.{digits}f}"
    if pm:
        return f"{stat['mean']:.{digits}f} ±{(stat['ci_high'] - stat['ci_low']) / 2:.{digits}f}"
    return f"{stat['mean']:.{digits}f} [{stat['ci_low']:.{digits}f}, {stat['ci_high']:.{digits}f}]"


def table_rows(results: dict[str, Any], compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """Column names and rows (strings) of the summary table: the reference, then each method, per mask rate.

    compact: the terminal's columns (COMPACT) with 'mean ±half-width' cells.
    """
    columns = list(COMPACT) if compact else COLUMNS

    def cell(stat: dict[str, Any] | None) -> str:
        return fmt(stat, pm=compact)

    rows = []
    for key in results["mask_rates"]:
        has_mask = float(key) > 0
        ref = results["reference"][key]
        cells = [{"mask": key, "method": "reference" if compact else "reference (start)", "utility": cell(ref["utility"]),
                  "regret": cell(ref["regret"]), "OOD mass": cell(ref["ood_mass"]) if has_mask else "–"}]
        for method in (m["name"] for m in results["methods"]):
            s = results["summary"][method][key]
            d = results["vs_baseline"].get(method, {}).get(key, {})
            cells.append({
                "mask": key, "method": method, "utility": cell(s["utility"]), "regret": cell(s["regret"]),
                "Δ utility vs {b}": cell(d["utility"]) if d else "",
                "OOD mass": cell(s["ood_mass"]) if has_mask else "–",
                "Δ OOD mass vs {b}": (cell(d["ood_mass"]) if has_mask else "–") if d else "",
                "OOD overestimation": cell(s["ood_overestimation"]),
            })
        rows += [[c.get(col, "") for col in columns] for c in cells]
    header = [COMPACT[c] if compact else c for c in columns]
    return [c.format(b=results["baseline"]) for c in header], rows


def verdict(stat: dict[str, Any] | None, higher_is_better: bool) -> str:
    """'better', 'worse' or 'no difference' for a paired difference (method - baseline) with its CI."""
    if stat is None or stat["ci_low"] is None:
        return "–"
    if stat["ci_low"] > 0 or stat["ci_high"] < 0:
        return "better" if (stat["mean"] > 0) == higher_is_better else "worse"
    return "no difference"


def verdict_table(results: dict[str, Any], metric: str = "utility") -> str:
    """Markdown: per method (rows) and mask rate (columns), the paired difference to the baseline
    in `metric`, its CI and whether the CI says better, worse or no difference."""
    keys = results["mask_rates"]
    higher = results["metrics"][metric]["higher_is_better"]
    lines = [
        f"Which methods beat {results['baseline']}: Δ {metric} (method − {results['baseline']}, paired over "
        f"{len(results['seeds'])} seeds) with its {results['confidence']:.0%} CI; better/worse when the CI "
        "excludes 0.",
        "",
        "| method | " + " | ".join(f"mask {k}" for k in keys) + " |",
        "|---|" + "|".join("---" for _ in keys) + "|",
    ]
    for name in (m["name"] for m in results["methods"] if m["name"] in results["vs_baseline"]):
        per_mask = results["vs_baseline"][name]
        cells = [f"{fmt(per_mask[k][metric])} {verdict(per_mask[k][metric], higher)}" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_table(results: dict[str, Any]) -> str:
    header, rows = table_rows(results)
    cfg = results["config"]
    lines = [
        f"Synthetic experiment: {cfg['n_prompts']}x{cfg['n_responses']} grid, {len(results['seeds'])} seeds, "
        f"{cfg['steps']} {cfg['optimizer']} steps (lr {cfg['learning_rate']:g}), {cfg['parameterization']} policy. "
        f"Mean [{results['confidence']:.0%} CI] over seeds; Δ = paired difference (method − {results['baseline']}) "
        f"over the same seeds. Utility: higher is better; regret, OOD mass and overestimation: lower is better.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def _panels(n: int, title: str) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(4.2 * n, 3.6), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    fig.suptitle(title)
    return fig, list(axes)


def _curve_plot(results: dict[str, Any], metric: str, keys: list[str], title: str, ylabel: str, path: Path) -> None:
    steps = np.asarray(results["curves"]["steps"])
    fig, axes = _panels(len(keys), title)
    for ax, key in zip(axes, keys):
        for m in results["methods"]:
            c = results["curves"]["methods"][m["name"]][key][metric]
            line = ax.plot(steps, c["mean"], label=m["name"])[0]
            if c["ci_low"] is not None:
                ax.fill_between(steps, c["ci_low"], c["ci_high"], color=line.get_color(), alpha=0.2)
        if metric == "utility":
            ref = results["reference"][key]
            opt = np.mean(np.add(results["reference_per_seed"][key]["utility"], results["reference_per_seed"][key]["regret"]))
            ax.axhline(ref["utility"]["mean"], color="grey", ls=":", label="reference")
            ax.axhline(opt, color="black", ls="--", lw=0.8, label="optimum")
        ax.set_title(f"mask rate {key}")
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
    axes[0].legend(fontsize=8)
    _save(fig, path)


def _grad_ratio_plot(results: dict[str, Any], path: Path) -> None:
    hist = results["grad_ratio_histogram"]
    edges = np.asarray(hist["edges"])
    keys = results["mask_rates"]
    fig, axes = _panels(len(keys), "log(|dL/dπ_w| / |dL/dπ_l|) during training (0 = balanced)")
    for ax, key in zip(axes, keys):
        for m in results["methods"]:
            counts = np.asarray(hist["counts"][m["name"]][key], dtype=float)
            density = counts / max(counts.sum(), 1.0) / np.diff(edges)
            ax.stairs(density, edges, label=m["name"])
        ax.axvline(0.0, color="grey", ls=":")
        ax.set_title(f"mask rate {key}")
        ax.set_xlabel("log gradient ratio (clipped at the edges)")
        ax.set_ylabel("density")
    axes[0].legend(fontsize=8)
    _save(fig, path)


def write_synthetic_report(results_json: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write the table and plots for `results_json` (default: into its folder); return their paths."""
    results_json = Path(results_json)
    results = read_json(results_json)
    out = Path(out_dir) if out_dir is not None else results_json.parent
    paths = {"table": out / TABLE_FILE, "utility_plot": out / UTILITY_PLOT,
             "ood_plot": out / OOD_PLOT, "grad_ratio_plot": out / GRAD_RATIO_PLOT}
    atomic_write_text(paths["table"], markdown_table(results) + "\n" + verdict_table(results))
    _curve_plot(results, "utility", results["mask_rates"], "Expected true utility during training",
                "E[u]", paths["utility_plot"])
    masked_keys = [k for k in results["mask_rates"] if float(k) > 0] or results["mask_rates"]
    _curve_plot(results, "ood_mass", masked_keys, "Probability mass on masked (OOD) responses",
                "OOD mass", paths["ood_plot"])
    _grad_ratio_plot(results, paths["grad_ratio_plot"])
    return paths


def print_table(results: dict[str, Any], console: Any) -> None:
    """The compact result table in the terminal (rich)."""
    from rich import box
    from rich.table import Table

    header, rows = table_rows(results, compact=True)
    table = Table(title=f"Synthetic experiment: {len(results['seeds'])} seeds, mean ±{results['confidence']:.0%} CI "
                        f"half-width;\nΔ = paired difference to {results['baseline']} over the same seeds",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name in header:
        table.add_column(name, no_wrap=True)
    previous = None
    for row in rows:
        if previous is not None and row[0] != previous:
            table.add_section()
        previous = row[0]
        table.add_row(*row)
    console.print(table)
