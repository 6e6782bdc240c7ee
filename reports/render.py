"""Report formats: leaderboard.md/.csv, ablations.md/.csv and the self-contained index.html.

The tables are pandas DataFrames (reports/tables.py); the page is the Jinja2 template
reports/templates/report.html.j2, rendered with autoescaping on, so completions, prompts, variant
and scorer names and config values (all untrusted text) are escaped wherever they appear. Plots
are inline base64 data URIs and the CSS and script are inline: the page loads nothing from anywhere.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from reports import tables
from reports.rundata import RunData
from reports.tables import arrow, fmt, fmt_diff, fmt_metric, fmt_p, fmt_seeds, frame

TEMPLATES = Path(__file__).parent / "templates"


def leaderboard_columns(results: dict[str, Any]) -> list[str]:
    return list(results["metric_definitions"])


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
    header = ["rank", "variant", "loss", "seeds"] + [defs[k]["label"] + arrow(defs[k]["higher_is_better"]) for k in cols]
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
    text += tables.to_markdown(frame(header, rows))
    text += "\n### Win, tie and loss shares\n\n" + tables.to_markdown(frame(*_win_rows(results)))
    text += "\n### Training diagnostics per seed\n\n" + tables.to_markdown(frame(*_per_seed_rows(results)))
    for name, sub in results["subsets"].items():
        text += (f"\n### Source '{name}' ({sub['n_prompts']} prompts)\n\n"
                 + tables.to_markdown(frame(*_subset_rows(results, sub))))
    text += ("\n## Paired comparisons\n\n" + COMPARISONS_NOTE.format(confidence=s["confidence"]) + "\n\n"
             + tables.to_markdown(frame(*_comparison_rows(results))))
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
    header = ["variant"] + [defs[k]["label"] + arrow(defs[k]["higher_is_better"]) for k in cols]
    return header, [[v] + [fmt_metric(m[k]) for k in cols] for v, m in sub["leaderboard"].items()]


def leaderboard_csv(results: dict[str, Any]) -> str:
    """Full-precision numbers: one row per variant; value, ci_low, ci_high and n per metric."""
    return tables.to_csv(tables.leaderboard_numbers(results))


# ------------------------------------------------------------------------------------------- HTML


def _html_table(df: pd.DataFrame) -> str:
    """A DataFrame as an HTML table; pandas escapes every cell."""
    return df.to_html(index=False, escape=True, border=0, na_rep="—")


def key_columns(results: dict[str, Any]) -> list[str]:
    """The leaderboard's first columns: each scorer's mean, safe rate and win rate against the
    baseline, and the held-out implicit-reward accuracy."""
    return [k for k in results["metric_definitions"]
            if (k.endswith((".mean", ".safe_rate", ".win_vs_baseline")) and not k.startswith(("train.", "length.")))
            or k.startswith("heldout.accuracy")]


def answer_boxes(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The first screen: the pre-registered comparison, whether training moved the baseline (the
    positive control), and how far the scorers can be trusted. kind: ok | warn | none (colour bar)."""
    primary = results["primary"]
    alpha = 1 - results["settings"]["confidence"]
    pc = results["positive_control"]["all"]
    significant = primary is not None and primary["p_value"] is not None and primary["p_value"] < alpha
    return [
        {"id": "primary", "title": "Primary comparison", "kind": "ok" if significant else "none",
         "lines": primary_lines(results)},
        {"id": "positive-control", "title": "Positive control: did the baseline move from the reference?",
         "kind": "ok" if pc["moved_on"] else "warn", "lines": positive_control_lines(results)[::-1]},
        {"id": "scorers", "title": "Scorers", "kind": "none",
         "lines": ["How far the scores can be trusted:"] + scorer_notes(results)},
    ]


def sample_browser(run: RunData, max_prompts: int) -> dict[str, Any] | None:
    """Per prompt, every unit's completions with their scores, for the page's sample browser; None
    for a report rebuilt from a results folder (it holds no completion texts)."""
    if run.results_folder:
        return None
    m = run.manifest
    shown = run.prompt_ids[:max_prompts]
    first = run.units[m.units[0].unit]
    prompts = []
    for p, pid in enumerate(shown):
        completions = [{"variant": v, "seed": u.seed, "sample": k, "response": g["response"],
                        "n_tokens": g["n_tokens"], "finish_reason": g["finish_reason"],
                        "scores": {s.name: round(float(run.units[u.unit].scores[s.name][p, k]), 4) for s in m.scorers}}
                       for v in m.variants() for u in m.units_of(v) for k in range(run.n_samples)
                       for g in [run.units[u.unit].generations[(pid, k)]]]
        prompts.append({"prompt_id": pid, "source": run.prompt_sources[p],
                        "prompt": first.generations[(pid, 0)]["prompt"], "completions": completions})
    note = (f"{len(shown)} of {len(run.prompt_ids)} prompts (`bdpo report --max-sample-prompts` shows more)."
            if len(shown) < len(run.prompt_ids) else f"All {len(shown)} prompts.")
    return {"prompts": prompts, "note": note, "variants": m.variants(), "scorers": [s.name for s in m.scorers],
            "sources": sorted({p["source"] for p in prompts if p["source"]})}


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def index_html(run: RunData, results: dict[str, Any], plots: dict[str, bytes | None], built_at: str,
               max_sample_prompts: int) -> str:
    s = results["settings"]
    alpha = 1 - s["confidence"]
    comparisons = frame(*_comparison_rows(results))
    comparisons["p (Holm)"] = [f"{cell} *" if c["p_holm"] is not None and c["p_holm"] < alpha else cell
                               for cell, c in zip(comparisons["p (Holm)"], results["comparisons"])]
    subsets = [{"name": name, "n_prompts": sub["n_prompts"], "table": _html_table(frame(*_subset_rows(results, sub)))}
               for name, sub in results["subsets"].items()]
    prov = {k: results[k] for k in ("provenance", "data_hashes", "model_hash", "seeds", "inputs", "report_environment")}
    return _environment().get_template("report.html.j2").render(
        results=results, settings=s, built_at=built_at, answer=answer_boxes(results),
        intervals_note=INTERVALS_NOTE.format(confidence=s["confidence"]),
        comparisons_note=COMPARISONS_NOTE.format(confidence=s["confidence"]) + f" * p (Holm) below {alpha:.2g}.",
        plots={name: base64.b64encode(png).decode("ascii") if png else None for name, png in plots.items()},
        leaderboard_key=_html_table(tables.leaderboard(results, key_columns(results))),
        leaderboard_all=_html_table(tables.leaderboard(results)),
        wins=_html_table(frame(*_win_rows(results))), per_seed=_html_table(frame(*_per_seed_rows(results))),
        subsets=subsets, comparisons=_html_table(comparisons), n_comparisons=len(results["comparisons"]),
        browser=sample_browser(run, max_sample_prompts),
        provenance=json.dumps(prov, indent=2, sort_keys=True),
        config=json.dumps(results["config"], indent=2, sort_keys=True),
    )
