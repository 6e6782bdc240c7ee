"""Report formats: leaderboard.md/.csv, ablations.md and the self-contained index.html.

Everything shown in HTML goes through `esc` (html.escape with quotes): completions, prompts, variant
and scorer names and config values are all untrusted text. Plots are inline base64 data URIs and
the CSS is inline, so the page loads nothing from anywhere.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from typing import Any

from reports.rundata import RunData

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5rem auto;max-width:1400px;
     padding:0 1rem;color:#1b1b1b;line-height:1.4}
h1{font-size:1.6rem}h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem}
th,td{border:1px solid #ccc;padding:.25rem .45rem;vertical-align:top;text-align:right}
th{background:#f2f2f2}td.l,th.l{text-align:left}
tr:nth-child(even) td{background:#fafafa}
.ci{color:#666;font-size:.8em}.sig{font-weight:bold;color:#0a5}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:.8rem;max-width:70ch}
details{margin:.3rem 0;border:1px solid #ddd;padding:.3rem .5rem;border-radius:4px}
summary{cursor:pointer}img{max-width:100%;border:1px solid #eee}
.meta{color:#555;font-size:.85rem}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def fmt_metric(entry: dict[str, Any] | None) -> str:
    """'value [lo, hi]' in plain text."""
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


def _arrow(hib: bool | None) -> str:
    return {True: " ↑", False: " ↓", None: ""}[hib]


def leaderboard_columns(results: dict[str, Any]) -> list[str]:
    return list(results["metric_definitions"])


# ----------------------------------------------------------------------------------- Markdown / CSV


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def clean(cell: str) -> str:
        return str(cell).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(clean(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(clean(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def scorer_notes(results: dict[str, Any]) -> list[str]:
    """One line per scorer: what it measures and, when the run trained it, its held-out accuracy."""
    lines = []
    for sc in results["scorers"]:
        h = sc.get("heldout")
        quality = (f"held-out pairwise accuracy {h['accuracy']:.3f} [{h['ci_low']:.3f}, {h['ci_high']:.3f}] "
                   f"({h['confidence']:.0%} CI, {h['n']} pairs never trained on)" if h else
                   "a given model (its accuracy is not measured by this run)")
        safe = f"; safe means score <= {sc['threshold']:g}" if sc["score_type"] == "cost" else ""
        lines.append(f"{sc['name']} ({sc['score_type']}{safe}): {quality}")
    return lines


def primary_lines(results: dict[str, Any]) -> list[str]:
    """The pre-registered comparison: what it is and its numbers, or that none was registered."""
    c = results["primary"]
    if c is None:
        return ["No primary comparison was registered (config `report.primary`): every comparison in this report "
                "is exploratory."]
    s = results["settings"]
    verdict = ("significant" if c["p_value"] is not None and c["p_value"] < 1 - s["confidence"] else "not significant")
    return [f"Primary (pre-registered): {c['variant']} minus {c['against']} on {c['metric']}, prompts of "
            f"{'every source' if c['subset'] == 'all' else 'source ' + repr(c['subset'])}: "
            f"{fmt_diff(c)} ({s['confidence']:.0%} CI), p = {fmt_p(c['p_value'])} ({c['test']}; {verdict} at "
            f"{1 - s['confidence']:.2g}), minimum detectable difference {fmt(c['min_detectable_difference'])}, "
            f"per-seed differences {fmt_seeds(c['per_seed'])}; n = {c['n']} prompts x {c['n_seeds']} seed(s)."]


def positive_control_lines(results: dict[str, Any]) -> list[str]:
    """Did the baseline move detectably from the reference (pooled prompts)? If not, say what follows."""
    pc = results["positive_control"]["all"]
    base, s = results["baseline"], results["settings"]
    lines = []
    h = pc["heldout"]
    if h is not None:
        lines.append(f"Held-out implicit-reward accuracy of {base} on {h['n']} eval pairs: {fmt(h['accuracy'])} "
                     f"[{fmt(h['ci_low'])}, {fmt(h['ci_high'])}] against 0.5 for the reference (its implicit reward "
                     f"is 0), p = {fmt_p(h['p_value'])}; per seed {', '.join(fmt(v) for v in h['per_seed'])}.")
    else:
        lines.append("Held-out implicit-reward accuracy was not measured for this run (no heldout/ files).")
    for e in pc["scorers"]:
        lines.append(f"{base} minus reference, {e['metric']}: {fmt_diff(e)}, "
                     f"p = {fmt_p(e['p_value'])}; per seed {fmt_seeds(e['per_seed'])}.")
    if not pc["measured"]:
        lines.append("The run has neither held-out implicit rewards nor a reference to compare against: whether "
                     "training moved the policies is unknown, so differences between variants cannot be read as "
                     "evidence.")
    elif pc["moved_on"]:
        lines.append(f"The baseline moved detectably from the reference on: {', '.join(pc['moved_on'])} "
                     f"(unadjusted p < {1 - s['confidence']:.2g}).")
    else:
        lines.append(f"The baseline did NOT move detectably from the reference on any of these (p >= "
                     f"{1 - s['confidence']:.2g}): training may not have changed the policies, so differences "
                     f"between variants cannot be read as evidence.")
    return lines


def leaderboard_md(results: dict[str, Any]) -> str:
    defs = results["metric_definitions"]
    cols = leaderboard_columns(results)
    header = ["rank", "variant", "loss", "seeds"] + [defs[k]["label"] + _arrow(defs[k]["higher_is_better"]) for k in cols]
    rows = []
    for rank, row in enumerate(results["leaderboard"], start=1):
        info = results["variants"][row["variant"]]
        rows.append([str(rank), row["variant"], str(info["loss"] or "—"), str(len(info["seeds"]))]
                    + [fmt_metric(row["metrics"][k]) for k in cols])
    s = results["settings"]
    text = (f"# Leaderboard: {results['experiment']}\n\n"
            "## Primary comparison\n\n" + "\n".join(primary_lines(results)) + "\n\n"
            "## Positive control: did the baseline move from the reference?\n\n"
            + "\n".join(f"- {line}" for line in positive_control_lines(results)) + "\n\n"
            f"## Leaderboard\n\n{INTERVALS_NOTE.format(confidence=s['confidence'])}\n\n"
            f"Baseline: {results['baseline']}. {results['n_prompts']} prompts x {results['n_samples_per_prompt']} "
            f"sample(s). Ordered by {s['primary_metric']}.\n\n"
            "Scorers: " + "; ".join(scorer_notes(results)) + ".\n\n")
    text += _md_table(header, rows)
    text += "\n### Win, tie and loss shares\n\n" + _md_table(*_win_rows(results))
    text += "\n### Training diagnostics per seed\n\n" + _md_table(*_per_seed_rows(results))
    for name, sub in results["subsets"].items():
        text += (f"\n### Source '{name}' ({sub['n_prompts']} prompts)\n\n"
                 + _md_table(*_subset_rows(results, sub)))
    text += ("\n## Paired comparisons\n\n" + COMPARISONS_NOTE.format(confidence=s["confidence"]) + "\n\n"
             + _md_table(*_comparison_rows(results)))
    return text


INTERVALS_NOTE = ("Values: mean [{confidence:.0%} CI]. Scorer metrics: the crossed seeds x prompts interval (the "
                  "seed-to-seed part at t with seeds - 1 df, the shared prompt part at t with prompts - 1 df; "
                  "docs/statistics.md). Training diagnostics: one value per seed, "
                  "t interval over seeds (per-seed values and range below). Win rate: ties count 1/2.")
COMPARISONS_NOTE = ("Difference = variant minus the comparator (`against`) on the same seeds, prompts and samples, "
                    "with the crossed {confidence:.0%} CI and its t test (p). p (Holm): the primary comparison is "
                    "its own family; all other rows are exploratory and Holm-adjusted together. Secondary analytic "
                    "tests, not adjusted: paired t and Wilcoxon on the seed-averaged per-prompt differences (seeds "
                    "treated as fixed), exact McNemar on the safe-rate cells (every cell treated as independent). "
                    "Minimum detectable difference: alpha = 1 - confidence, power 0.8, from the standard error and "
                    "df of the crossed test (seed variance included). Bootstrap: crossed (seeds, and one prompt "
                    "sample shared by all seeds), a cross-check.")


def _comparison_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "against", "subset", "metric", "difference [CI]", "per-seed differences", "p", "p (Holm)",
              "role", "paired t p", "Wilcoxon p", "McNemar p", "min. detectable diff.", "bootstrap CI", "n x seeds"]
    rows = [[c["variant"], c["against"], c["subset"], c["metric"], fmt_diff(c), fmt_seeds(c["per_seed"]),
             fmt_p(c["p_value"]), fmt_p(c["p_holm"]), c["role"], fmt_p(c["p_t_prompts"]), fmt_p(c["p_wilcoxon"]),
             fmt_p(c["p_mcnemar"]), fmt(c["min_detectable_difference"]),
             f"[{fmt(c['bootstrap_ci'][0])}, {fmt(c['bootstrap_ci'][1])}]", f"{c['n']} x {c['n_seeds']}"]
            for c in results["comparisons"]]
    return header, rows


def _win_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Strict win, tie and loss shares behind every win rate (win rate = win + tie / 2)."""
    keys = [k for k in results["metric_definitions"] if ".win_vs_" in k]
    header = ["variant", "metric", "win rate (ties 1/2)", "strict win", "tie", "loss"]
    rows = []
    for row in results["leaderboard"]:
        for k in keys:
            e = row["metrics"][k]
            if e is not None:
                rows.append([row["variant"], k, fmt_metric(e), fmt(e["win"]), fmt(e["tie"]), fmt(e["loss"])])
    return header, rows


def _per_seed_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    keys = [k for k in results["metric_definitions"] if k.startswith("train.")]
    header = ["variant", "diagnostic", "per-seed values", "mean [t CI over seeds]", "range [min, max]"]
    rows = []
    for row in results["leaderboard"]:
        for k in keys:
            e = row["metrics"][k]
            if e is not None:
                rows.append([row["variant"], results["metric_definitions"][k]["label"], fmt_seeds(e["per_seed"]),
                             fmt_metric(e), f"[{fmt(e['min'])}, {fmt(e['max'])}]"])
    return header, rows


def _subset_rows(results: dict[str, Any], sub: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    defs = results["metric_definitions"]
    cols = [k for k in leaderboard_columns(results) if not k.startswith("train.")]
    header = ["variant"] + [defs[k]["label"] + _arrow(defs[k]["higher_is_better"]) for k in cols]
    return header, [[v] + [fmt_metric(m[k]) for k in cols] for v, m in sub["leaderboard"].items()]


def leaderboard_csv(results: dict[str, Any]) -> str:
    """Full-precision numbers: one row per variant; value, ci_low, ci_high and n per metric."""
    cols = leaderboard_columns(results)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["rank", "variant", "loss", "n_seeds"]
               + [f"{k}{suffix}" for k in cols for suffix in ("", ".ci_low", ".ci_high", ".n")])
    for rank, row in enumerate(results["leaderboard"], start=1):
        info = results["variants"][row["variant"]]
        cells: list[Any] = [rank, row["variant"], info["loss"] or "", len(info["seeds"])]
        for k in cols:
            e = row["metrics"][k]
            cells += ["", "", "", ""] if e is None else [
                repr(e["value"]), "" if e["ci_low"] is None else repr(e["ci_low"]),
                "" if e["ci_high"] is None else repr(e["ci_high"]), e["n"]]
        w.writerow(cells)
    return buf.getvalue()


def _ablation_groups(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Ablation tables grouped by swept field: shown as one table per field with a metric column."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for t in results["ablations"]:
        groups.setdefault(t["field"], []).append(t)
    return groups


def _ablation_header(field: str, values: list[Any]) -> list[str]:
    return ["loss", "other swept fields", "metric"] + [f"{field} = {v}" for v in values]


def _ablation_fixed(row: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in row["fixed"].items()) or "—"


def ablations_md(results: dict[str, Any]) -> str:
    if not results["ablations"]:
        return "# Ablations\n\nNo config field was swept in this run (no unit has a non-empty `sweep`).\n"
    text = "# Ablations\n\nCells: mean [CI] of the metric for the variant with that setting; — where no variant has it.\n"
    defs = results["metric_definitions"]
    for field, tables in _ablation_groups(results).items():
        rows = [[str(r["loss"]), _ablation_fixed(r), defs[t["metric"]]["label"]] + [fmt_metric(c) for c in r["cells"]]
                for r_index in range(len(tables[0]["rows"])) for t in tables for r in [t["rows"][r_index]]]
        text += f"\n## {field}\n\n" + _md_table(_ablation_header(field, tables[0]["values"]), rows)
    return text


# ------------------------------------------------------------------------------------------- HTML


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "<td>—</td>"
    ci = "" if entry.get("ci_low") is None else f'<br><span class="ci">[{fmt(entry["ci_low"])}, {fmt(entry["ci_high"])}]</span>'
    return f"<td>{esc(fmt(entry['value']))}{ci}</td>"


def _table(header: list[str], body: list[str], left: int = 1) -> str:
    ths = "".join(f'<th class="{"l" if i < left else ""}">{esc(h)}</th>' for i, h in enumerate(header))
    return f"<table><thead><tr>{ths}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _leaderboard_html(results: dict[str, Any]) -> str:
    defs = results["metric_definitions"]
    cols = leaderboard_columns(results)
    header = ["variant", "loss", "seeds", "n"] + [defs[k]["label"] + _arrow(defs[k]["higher_is_better"]) for k in cols]
    body = []
    for row in results["leaderboard"]:
        info = results["variants"][row["variant"]]
        n = next((e["n"] for e in row["metrics"].values() if e is not None), "")
        body.append(f'<tr><td class="l"><b>{esc(row["variant"])}</b></td><td class="l">{esc(info["loss"] or "—")}</td>'
                    f"<td>{len(info['seeds'])}</td><td>{esc(n)}</td>"
                    + "".join(_cell(row["metrics"][k]) for k in cols) + "</tr>")
    return _table(header, body, left=2)


def _comparisons_html(results: dict[str, Any]) -> str:
    if not results["comparisons"]:
        return "<p>No variant besides the baseline.</p>"
    header, rows = _comparison_rows(results)
    body = []
    for c, cells in zip(results["comparisons"], rows):
        sig = ' class="sig"' if c["p_holm"] is not None and c["p_holm"] < 1 - results["settings"]["confidence"] else ""
        tds = [f'<td class="l">{esc(x)}</td>' for x in cells[:4]] + [f"<td>{esc(x)}</td>" for x in cells[4:7]]
        tds += [f"<td{sig}>{esc(cells[7])}</td>", f'<td class="l">{esc(cells[8])}</td>']
        tds += [f"<td>{esc(x)}</td>" for x in cells[9:]]
        body.append("<tr>" + "".join(tds) + "</tr>")
    return _table(header, body, left=4)


def _plain_table_html(header: list[str], rows: list[list[str]], left: int = 2) -> str:
    body = ["<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{esc(x)}</td>' for i, x in enumerate(r)) + "</tr>"
            for r in rows]
    return _table(header, body, left=left)


def _ablations_html(results: dict[str, Any]) -> str:
    if not results["ablations"]:
        return "<p>No config field was swept in this run.</p>"
    defs = results["metric_definitions"]
    parts = []
    for field, tables in _ablation_groups(results).items():
        body = []
        for r_index in range(len(tables[0]["rows"])):
            for i, t in enumerate(tables):
                r = t["rows"][r_index]
                # The row's key cells span its metric lines.
                key = (f'<td class="l" rowspan="{len(tables)}">{esc(r["loss"])}</td>'
                       f'<td class="l" rowspan="{len(tables)}">{esc(_ablation_fixed(r))}</td>') if i == 0 else ""
                body.append(f'<tr>{key}<td class="l">{esc(defs[t["metric"]]["label"])}</td>'
                            + "".join(_cell(c) for c in r["cells"]) + "</tr>")
        parts.append(f"<h3>{esc(field)}</h3>" + _table(_ablation_header(field, tables[0]["values"]), body, left=3))
    return "".join(parts)


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return f"<p>{esc(alt)}: nothing to plot in this run.</p>"
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _samples_html(run: RunData, max_prompts: int) -> str:
    if run.results_folder:
        return "<p>This report was rebuilt from a results folder: the completion texts are not part of it.</p>"
    m = run.manifest
    shown = run.prompt_ids[:max_prompts]
    note = (f"<p class=\"meta\">Showing {len(shown)} of {len(run.prompt_ids)} prompts "
            f"(<code>bdpo report --max-sample-prompts</code> shows more).</p>" if len(shown) < len(run.prompt_ids) else "")
    first_unit = m.units[0].unit
    parts = [note]
    score_names = [s.name for s in m.scorers]
    for pid in shown:
        prompt = run.units[first_unit].generations[(pid, 0)]["prompt"]
        preview = " ".join(prompt.split())[:140]
        body = []
        for v in m.variants():
            for u in m.units_of(v):
                d = run.units[u.unit]
                p = run.prompt_ids.index(pid)
                for k in range(run.n_samples):
                    g = d.generations[(pid, k)]
                    scores = "".join(f"<td>{esc(fmt(d.scores[s][p, k]))}</td>" for s in score_names)
                    body.append(f'<tr><td class="l">{esc(v)}</td><td>{esc(u.seed if u.seed is not None else "—")}</td>'
                                f"<td>{k}</td>{scores}<td>{esc(g['n_tokens'])}</td>"
                                f'<td class="l">{esc(g["finish_reason"])}</td>'
                                f'<td class="l"><pre>{esc(g["response"])}</pre></td></tr>')
        header = ["variant", "seed", "sample"] + score_names + ["tokens", "finish", "completion"]
        # The first prompt starts open so the page shows what a sample row looks like.
        parts.append(f"<details{' open' if pid == shown[0] else ''}><summary><code>{esc(pid)}</code> {esc(preview)}</summary>"
                     f"<p><b>Prompt</b></p><pre>{esc(prompt)}</pre>{_table(header, body, left=1)}</details>")
    return "".join(parts)


def index_html(run: RunData, results: dict[str, Any], plots: dict[str, bytes | None], built_at: str,
               max_sample_prompts: int) -> str:
    s = results["settings"]
    prov = {k: results[k] for k in ("provenance", "data_hashes", "model_hash", "seeds", "inputs", "report_environment")}
    meta = (f"Baseline <b>{esc(results['baseline'])}</b>; reference <b>{esc(results['reference'] or 'none')}</b>; "
            f"{results['n_prompts']} prompts x {results['n_samples_per_prompt']} sample(s); "
            f"seeds {esc(results['seeds'])}. {esc(INTERVALS_NOTE.format(confidence=s['confidence']))}<br>Scorers: "
            + "; ".join(esc(line) for line in scorer_notes(results)) + ".")
    subsets = "".join(f"<h3>Source {esc(name)} ({sub['n_prompts']} prompts)</h3>"
                      + _plain_table_html(*_subset_rows(results, sub), left=1)
                      for name, sub in results["subsets"].items())
    sections = [
        ("Primary comparison", "".join(f"<p>{esc(line)}</p>" for line in primary_lines(results))),
        ("Positive control: did the baseline move from the reference?",
         "<ul>" + "".join(f"<li>{esc(line)}</li>" for line in positive_control_lines(results)) + "</ul>"),
        ("Leaderboard", _leaderboard_html(results)),
        ("Win, tie and loss shares", _plain_table_html(*_win_rows(results))),
        ("Training diagnostics per seed", _plain_table_html(*_per_seed_rows(results))),
        ("Per data source", subsets or "<p>One data source: the leaderboard above is its table.</p>"),
        ("Paired comparisons",
         f"<p class=\"meta\">{esc(COMPARISONS_NOTE.format(confidence=s['confidence']))} Bold p (Holm): below "
         f"{1 - s['confidence']:.2g} within its family.</p>" + _comparisons_html(results)),
        ("Ablations", _ablations_html(results)),
        ("Reward versus cost", _img(plots.get("frontier"), "reward versus cost frontier")),
        ("Score distributions", _img(plots.get("distributions"), "score distributions")),
        ("Training curves", _img(plots.get("training_curves"), "training curves")),
        ("Samples", _samples_html(run, max_sample_prompts)),
        ("Provenance", f"<details><summary>versions, hashes, inputs</summary><pre>{esc(json.dumps(prov, indent=2, sort_keys=True))}</pre></details>"
                       f"<details><summary>resolved config</summary><pre>{esc(json.dumps(results['config'], indent=2, sort_keys=True))}</pre></details>"),
    ]
    body = "".join(f"<h2>{esc(title)}</h2>{content}" for title, content in sections)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc('bdpo report: ' + results['experiment'])}</title><style>{CSS}</style></head>"
            f"<body><h1>{esc('bdpo report: ' + results['experiment'])}</h1><p class=\"meta\">{meta}</p>{body}"
            f"<p class=\"meta\">Built {esc(built_at)} from the run's result files.</p></body></html>\n")
