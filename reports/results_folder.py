"""Export a run directory as a *results folder*: the small files a report is rebuilt from, without the
models and the completion texts, so a study's results can be committed (docs/results-schema.md).

    bdpo report runs/pku-study --export docs/results/pku-study

writes, from the run directory (every file is checked by `reports.rundata.load_run` first):

| results folder                    | from the run directory                          |
|-----------------------------------|-------------------------------------------------|
| manifest.json, config.yaml        | the same files                                  |
| data_report.json                  | data/data_report.json (when the run has it)     |
| scores/<unit>.<scorer>.jsonl      | the same files                                  |
| lengths.csv                       | generations/<unit>.jsonl: n_tokens of every row |
| train_logs/<unit>.jsonl           | checkpoints/<unit>/train_log.jsonl              |
| heldout/<unit>.jsonl              | the same files (when the run measured them)     |
| scorers/<name>/scorer.json        | the same files (scorers the run trained)        |
| judgments/<unit>.jsonl            | the same files (when the run has a judge)       |

and then the report (results.json, leaderboard, plots, index.html) built from the folder alone. The
folder is written beside its destination and renamed into place when complete, so an interrupted or
failed export leaves nothing; an existing non-empty destination is refused, never overwritten.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from harness.errors import UserError
from reports.build import build_report
from reports.rundata import LENGTH_COLUMNS, RunData, load_run


def export_results_folder(run_dir: str | Path, dest: str | Path, **report_options: Any) -> Path:
    """Write `run_dir`'s results folder at `dest` (which must not exist, or be empty), build its report
    there (`report_options` go to build_report) and return it."""
    root, dest = Path(run_dir), Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"{dest}: already exists and is not an empty folder. Export to a new folder "
                        f"(nothing was written).")
    run = load_run(root)
    if run.results_folder:
        raise UserError(f"{root}: already a results folder (no generations/). Copy it instead.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    partial.chmod(0o777 & ~umask)  # mkdtemp makes it owner-only; a results folder is an ordinary folder
    try:
        _write(root, run, partial)
        build_report(partial, **report_options)
        if dest.exists():
            dest.rmdir()  # empty, checked above
        partial.rename(dest)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return dest


def _write(root: Path, run: RunData, out: Path) -> None:
    copies = {"manifest.json": "manifest.json", "config.yaml": "config.yaml",
              "data/data_report.json": "data_report.json"}
    for unit in run.manifest.units:
        for scorer in run.manifest.scorers:
            name = f"scores/{unit.unit}.{scorer.name}.jsonl"
            copies[name] = name
        if unit.loss is not None:
            copies[f"checkpoints/{unit.unit}/train_log.jsonl"] = f"train_logs/{unit.unit}.jsonl"
            if run.has_heldout:
                copies[f"heldout/{unit.unit}.jsonl"] = f"heldout/{unit.unit}.jsonl"
    for scorer in run.manifest.scorers:
        copies[f"scorers/{scorer.name}/scorer.json"] = f"scorers/{scorer.name}/scorer.json"
    for path in sorted((root / "judgments").glob("*.jsonl")):
        copies[f"judgments/{path.name}"] = f"judgments/{path.name}"
    optional = {"config.yaml", "data/data_report.json"} | {f"scorers/{s.name}/scorer.json" for s in run.manifest.scorers}
    for source, target in copies.items():
        path = root / source
        if not path.is_file():
            if source in optional:
                continue
            raise UserError(f"{path}: not found. Rerun `bdpo run` to complete the run before exporting it.")
        (out / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out / target)
    with open(out / "lengths.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(LENGTH_COLUMNS)
        for unit in run.manifest.units:
            rows = run.units[unit.unit].generations
            for (prompt_id, sample_idx) in sorted(rows):
                writer.writerow([unit.unit, prompt_id, sample_idx, rows[(prompt_id, sample_idx)]["n_tokens"]])
