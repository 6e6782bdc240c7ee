"""The report's tables as pandas DataFrames, their Markdown and CSV files, and the number formats.

One DataFrame per table (leaderboard, comparisons, ablation pivots, ...); the Markdown files are
`DataFrame.to_markdown` and the CSV files `DataFrame.to_csv`, so the files and the HTML page show
the same cells. Cells are `value [ci_low, ci_high]` strings in Markdown and HTML, full-precision
numbers in CSV.
"""

from __future__ import annotations

from typing import Any

import pandas as pd


def fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def fmt_metric(entry: dict[str, Any] | None) -> str:
    """'value [lo, hi]' in plain text ('—' where the metric does not apply)."""
    if entry is None:
        return "—"
    if entry.get("ci_low") is None:
        return fmt(entry["value"])
    return f"{fmt(entry['value'])} [{fmt(entry['ci_low'])}, {fmt(entry['ci_high'])}]"


def fmt_p(p: float | None) -> str:
    """An analytic p-value: 3 significant digits, small ones in scientific notation."""
    if p is None:
        return "—"
    return f"{p:.3g}" if p >= 1e-3 else f"{p:.2e}"


def fmt_seeds(values: list[float] | None) -> str:
    return "—" if not values else ", ".join(f"{v:+.3f}" for v in values)


def fmt_diff(c: dict[str, Any]) -> str:
    return fmt_metric({"value": c["difference"], "ci_low": c["ci_low"], "ci_high": c["ci_high"]})


def arrow(higher_is_better: bool | None) -> str:
    return {True: " ↑", False: " ↓", None: ""}[higher_is_better]


def metric_label(results: dict[str, Any], key: str) -> str:
    d = results["metric_definitions"][key]
    return d["label"] + arrow(d["higher_is_better"])


def frame(header: list[str], rows: list[list[Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=header)


def to_markdown(df: pd.DataFrame) -> str:
    # Cells are plain text: a "|" inside one would end it.
    return df.astype(str).replace({r"\|": r"\\|", "\n": " "}, regex=True).to_markdown(index=False, tablefmt="github") + "\n"


# ------------------------------------------------------------------------------------ leaderboard


def leaderboard(results: dict[str, Any], columns: list[str] | None = None) -> pd.DataFrame:
    """One row per variant, best first; one formatted cell per metric (all metrics by default)."""
    cols = list(results["metric_definitions"]) if columns is None else columns
    rows = []
    for rank, row in enumerate(results["leaderboard"], start=1):
        info = results["variants"][row["variant"]]
        rows.append({"rank": rank, "variant": row["variant"], "loss": info["loss"] or "—",
                     "seeds": len(info["seeds"]),
                     **{metric_label(results, k): fmt_metric(row["metrics"][k]) for k in cols}})
    return pd.DataFrame(rows)


def leaderboard_numbers(results: dict[str, Any]) -> pd.DataFrame:
    """leaderboard.csv: value, ci_low, ci_high and n per metric, at full precision."""
    rows = []
    for rank, row in enumerate(results["leaderboard"], start=1):
        info = results["variants"][row["variant"]]
        cells: dict[str, Any] = {"rank": rank, "variant": row["variant"], "loss": info["loss"] or "",
                                 "n_seeds": len(info["seeds"])}
        for k in results["metric_definitions"]:
            e = row["metrics"][k] or {}
            cells.update({k: e.get("value"), f"{k}.ci_low": e.get("ci_low"), f"{k}.ci_high": e.get("ci_high"),
                          f"{k}.n": e.get("n")})
        rows.append(cells)
    return pd.DataFrame(rows)


def to_csv(df: pd.DataFrame) -> str:
    # Shortest round-tripping floats; integer columns with gaps stay integers.
    return df.convert_dtypes().to_csv(index=False, lineterminator="\n", float_format=lambda x: repr(float(x)))


# ------------------------------------------------------------------------------------ ablations


def ablation_cells(results: dict[str, Any]) -> pd.DataFrame:
    """The ablation tables in long form: one row per (swept field, setting, metric, value)."""
    rows = []
    for t in results["ablations"]:
        for r in t["rows"]:
            other = ", ".join(f"{k}={v}" for k, v in r["fixed"].items()) or "—"
            for value, variant, cell in zip(t["values"], r["variants"], r["cells"]):
                if variant is None:
                    continue
                cell = cell or {}  # None: the metric does not apply (the baseline's win rate against itself)
                rows.append({"field": t["field"], "loss": str(r["loss"]), "other swept fields": other,
                             "metric": t["metric"], "value": value, "variant": variant,
                             "estimate": cell.get("value"), "ci_low": cell.get("ci_low"),
                             "ci_high": cell.get("ci_high"), "cell": fmt_metric(cell or None)})
    return pd.DataFrame(rows, columns=["field", "loss", "other swept fields", "metric", "value", "variant",
                                       "estimate", "ci_low", "ci_high", "cell"])


def ablation_pivots(results: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """Per swept field: rows = (loss, other swept fields, metric), columns = the field's values."""
    cells = ablation_cells(results)
    labels = {k: metric_label(results, k) for k in results["metric_definitions"]}
    metric_order = {m: i for i, m in enumerate(results["metric_definitions"])}
    pivots = {}
    for field, group in cells.groupby("field", sort=False):
        values = next(t["values"] for t in results["ablations"] if t["field"] == field)
        group = group.assign(column=[f"{field} = {v}" for v in group["value"]], order=group["metric"].map(metric_order))
        table = group.pivot_table(index=["loss", "other swept fields", "order"], columns="column", values="cell",
                                  aggfunc="first", fill_value="—", sort=True)
        table = table.reindex(columns=[f"{field} = {v}" for v in values], fill_value="—").reset_index()
        inverse = {i: m for m, i in metric_order.items()}
        table.insert(2, "metric", [labels[inverse[i]] for i in table.pop("order")])
        table.columns.name = None
        pivots[field] = table
    return pivots


def ablations_md(results: dict[str, Any]) -> str:
    if not results["ablations"]:
        return "# Ablations\n\nNo config field was swept in this run (no unit has a non-empty `sweep`).\n"
    text = ("# Ablations\n\nCells: mean [CI] of the metric for the variant with that setting; — where no variant "
            "has it. The same numbers in long form: ablations.csv.\n")
    for field, table in ablation_pivots(results).items():
        text += f"\n## {field}\n\n" + to_markdown(table)
    return text


def ablations_csv(results: dict[str, Any]) -> str:
    return to_csv(ablation_cells(results).drop(columns="cell"))
