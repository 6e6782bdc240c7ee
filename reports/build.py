"""Build a run's report from its result files: results.json, leaderboard.md/.csv, ablations.md/.csv,
plots/*.png and index.html.

Everything is written into a temporary folder beside the target and renamed into place at the end,
so a bad input (caught while reading, before anything is written) or a crash leaves the previous
report untouched and no partial one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from harness.io import atomic_write_json, to_json
from harness.provenance import package_versions, timestamp
from reports import plots
from reports.analysis import Settings, analyse, settings_for
from reports.judge import add_judge
from reports.render import index_html, key_columns, leaderboard_csv, leaderboard_md
from reports.tables import ablations_csv, ablations_md
from reports.rundata import RunData, load_run

RESULTS_SCHEMA_VERSION = 2
# Packages whose versions can change the report's numbers (resampling, plotting).
REPORT_PACKAGES = ("bdpo-harness", "numpy", "scipy", "matplotlib", "pandas", "jinja2")


def results_json(run: RunData, settings: Settings) -> dict[str, Any]:
    """results.json: deterministic for given inputs; run timestamps only under "timestamps"."""
    m = run.manifest
    body = analyse(run, settings)
    results = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "experiment": m.experiment,
        "baseline": m.baseline,
        "reference": m.reference,
        "scorers": [{"name": s.name, "score_type": s.score_type, "threshold": s.threshold,
                     "heldout": run.scorer_heldout.get(s.name)} for s in m.scorers],
        **body,
        "config": m.config,
        "provenance": m.provenance,
        "data_hashes": m.data_hashes,
        "model_hash": m.model_hash,
        "seeds": list(m.seeds),
        "inputs": dict(run.input_hashes),
        # Versions only: the run's git hash is in `provenance`; the report code's commit would make
        # results.json change with every unrelated commit.
        "report_environment": {"versions": package_versions(REPORT_PACKAGES)},
        "timestamps": m.timestamps,
    }
    add_judge(results, run.root, m, run.prompt_ids, run.n_samples)
    return results


def _replace_dir(new: Path, final: Path) -> None:
    """Move `new` onto `final`; the old folder is set aside first and deleted only after the swap."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}-old-", dir=final.parent))
        os.replace(final, old / final.name)
    os.replace(new, final)
    if old is not None:
        shutil.rmtree(old)


# The report's files: in a results folder they sit beside the result files they are built from.
REPORT_FILES = ("results.json", "leaderboard.md", "leaderboard.csv", "ablations.md", "ablations.csv", "index.html",
                "plots")


def build_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                 bootstrap_samples: int | None = None, seed: int | None = None,
                 max_sample_prompts: int = 50) -> Path:
    """Write the report of `run_dir` into `out_dir` (default `<run_dir>/report/`, and then also
    `<run_dir>/results.json`; for a results folder, default: the folder itself, replacing only
    REPORT_FILES). Returns the report folder."""
    run = load_run(run_dir)
    settings = settings_for(run.manifest, bootstrap_samples, seed)
    results = results_json(run, settings)
    figures = {
        "forest": plots.forest(results),
        "ablations": plots.ablation_multiples(results, key_columns(results)),
        "training_curves": plots.training_curves(run),
        "frontier": plots.frontier(run, results),
        "distributions": plots.distributions(run),
    }
    in_place = out_dir is None and run.results_folder
    final = Path(out_dir) if out_dir is not None else run.root / ("report" if not in_place else ".report-new")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-new-", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it owner-only; the report is an ordinary folder
    try:
        (tmp / "results.json").write_text(to_json(results), encoding="utf-8")
        (tmp / "leaderboard.md").write_text(leaderboard_md(results), encoding="utf-8")
        (tmp / "leaderboard.csv").write_text(leaderboard_csv(results), encoding="utf-8")
        (tmp / "ablations.md").write_text(ablations_md(results), encoding="utf-8")
        (tmp / "ablations.csv").write_text(ablations_csv(results), encoding="utf-8")
        (tmp / "plots").mkdir()
        for name, png in figures.items():
            if png is not None:
                (tmp / "plots" / f"{name}.png").write_bytes(png)
        (tmp / "index.html").write_text(index_html(run, results, figures, timestamp(), max_sample_prompts),
                                        encoding="utf-8")
        _replace_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    if in_place:
        for name in REPORT_FILES:
            if (run.root / name).is_dir():
                shutil.rmtree(run.root / name)
            if (final / name).exists():
                os.replace(final / name, run.root / name)
        shutil.rmtree(final)
        return run.root
    if out_dir is None:
        atomic_write_json(run.root / "results.json", results)
    return final
