"""Read a run directory's result files into arrays, checking every row (reports read nothing else).

Files read (schemas in harness/records.py): manifest.json, generations/<unit>.jsonl,
scores/<unit>.<scorer>.jsonl, checkpoints/<unit>/train_log.jsonl (trained units only),
heldout/<unit>.jsonl (trained units' held-out implicit rewards, when the run measured them), and
scorers/<scorer>/scorer.json where the run trained that scorer (its held-out accuracy).

A committed *results folder* (e.g. docs/results/hh-study/) holds the same files without the
models and completion texts: `lengths.csv` (unit, prompt_id, sample_idx, n_tokens) instead of
generations/, and `train_logs/<unit>.jsonl` instead of checkpoints/<unit>/train_log.jsonl. A folder
without generations/ is read that way.

Every unit must cover the same (prompt_id, sample_idx) grid, so variants compare on the same
prompts; a gap or a bad value is a one-line UserError naming the file, the line and the field.
A prompt's data source is the part of its prompt_id before the first ':' (harness/data.py names
every pair `<source>:<key>`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import csv

import numpy as np

from harness.errors import UserError
from harness.io import iter_jsonl, read_json, require_finite, sha256_file, sha256_json
from harness.records import TRAIN_LOG_FIELDS, require_fields
from reports.manifest import Manifest, Unit, load_manifest

# The held-out accuracy block of a trained scorer's scorer.json that the report reads.
HELDOUT_FIELDS = ("accuracy", "ci_low", "ci_high", "n", "confidence")
GENERATION_COLUMNS = ("prompt_id", "sample_idx", "prompt", "response", "n_tokens", "finish_reason")
LENGTH_COLUMNS = ("unit", "prompt_id", "sample_idx", "n_tokens")
# heldout/<unit>.jsonl: per eval pair, the implicit-reward margin and whether it ranks chosen first.
HELDOUT_COLUMNS = ("pair_id", "source", "margin", "correct")
Key = tuple[str, int]


@dataclass
class UnitData:
    """One unit's results on the shared grid: arrays are [P, K] (prompts x samples)."""

    unit: Unit
    scores: dict[str, np.ndarray]
    n_tokens: np.ndarray
    generations: dict[Key, dict[str, Any]]  # the generation rows, for the samples table (empty in a results folder)
    train_log: list[dict[str, Any]]  # empty for the reference
    heldout: dict[str, np.ndarray]  # "margin", "correct" [N] per eval pair (empty: not measured)


@dataclass
class RunData:
    root: Path
    manifest: Manifest
    prompt_ids: list[str]
    n_samples: int
    units: dict[str, UnitData]
    input_hashes: dict[str, str]  # relative path -> sha256 of every file read
    # Scorer name -> the held-out pairwise accuracy of a scorer this run trained (scorer.json "heldout").
    scorer_heldout: dict[str, dict[str, Any]]
    prompt_sources: list[str]  # per prompt_ids entry
    heldout_ids: list[str]  # eval pair ids of heldout/<unit>.jsonl (empty: not measured)
    heldout_sources: list[str]
    # True when read from a results folder (no completion texts).
    results_folder: bool = False

    @property
    def has_heldout(self) -> bool:
        return bool(self.heldout_ids)

    def heldout_row(self, unit: Unit, field: str) -> np.ndarray:
        """[N] per eval pair of `field` ("margin" or "correct"); the untrained reference's implicit
        reward is 0, so its margin is 0 and each pair counts 1/2."""
        data = self.units[unit.unit].heldout
        if unit.loss is None:
            return np.full(len(self.heldout_ids), 0.5 if field == "correct" else 0.0)
        return data[field]


def _key(row: dict[str, Any], where: str) -> Key:
    pid, idx = row["prompt_id"], row["sample_idx"]
    if not isinstance(pid, str):
        raise UserError(f"{where}: field 'prompt_id': expected a string, got {pid!r}.")
    if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
        raise UserError(f"{where}: field 'sample_idx': expected an integer >= 0, got {idx!r}.")
    return pid, idx


def _read_keyed(path: Path, fields: tuple[str, ...]) -> dict[Key, tuple[int, dict[str, Any]]]:
    """Rows of a JSONL file keyed by (prompt_id, sample_idx), with their line numbers."""
    rows: dict[Key, tuple[int, dict[str, Any]]] = {}
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        require_fields(row, fields, where)
        key = _key(row, where)
        if key in rows:
            raise UserError(f"{where}: duplicate row for prompt_id {key[0]!r} sample_idx {key[1]} "
                            f"(first at line {rows[key][0]}). Remove one of them or regenerate the file.")
        rows[key] = (lineno, row)
    if not rows:
        raise UserError(f"{path}: no rows. Rerun the stage that writes it.")
    return rows


def _same_keys(path: Path, keys: set[Key], expected: set[Key], expected_from: Path) -> None:
    missing = sorted(expected - keys)
    if missing:
        raise UserError(f"{path}: no row for prompt_id {missing[0][0]!r} sample_idx {missing[0][1]} "
                        f"({len(missing)} missing) that {expected_from} has. Rerun the stage that writes it.")
    extra = sorted(keys - expected)
    if extra:
        raise UserError(f"{path}: row for prompt_id {extra[0][0]!r} sample_idx {extra[0][1]} "
                        f"({len(extra)} extra) that {expected_from} lacks. Rerun the stage that writes it.")


def _read_train_log(path: Path) -> list[dict[str, Any]]:
    rows = []
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        require_fields(row, TRAIN_LOG_FIELDS, where)
        # A quantity the loss does not define (e.g. lambda for DPO) may be null; anything else must be finite.
        clean = {name: (None if row[name] is None and name not in ("step", "loss")
                        else require_finite(row[name], f"{where}: field '{name}'")) for name in TRAIN_LOG_FIELDS}
        rows.append(clean)
    if not rows:
        raise UserError(f"{path}: no rows. Retrain this unit or remove it from manifest.json.")
    return sorted(rows, key=lambda r: r["step"])


def _read_lengths(path: Path) -> dict[str, dict[Key, tuple[int, dict[str, Any]]]]:
    """lengths.csv of a results folder: unit -> rows keyed like generation rows (n_tokens only)."""
    if not path.is_file():
        raise UserError(f"{path}: not found. A results folder needs generations/ or lengths.csv "
                        f"(unit, prompt_id, sample_idx, n_tokens).")
    out: dict[str, dict[Key, tuple[int, dict[str, Any]]]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != LENGTH_COLUMNS:
            raise UserError(f"{path}:1: expected the columns {', '.join(LENGTH_COLUMNS)}, got {reader.fieldnames}.")
        for lineno, row in enumerate(reader, start=2):
            where = f"{path}:{lineno}"
            try:
                key, n = (row["prompt_id"], int(row["sample_idx"])), int(row["n_tokens"])
            except (TypeError, ValueError):
                raise UserError(f"{where}: fields 'sample_idx' and 'n_tokens' must be integers.") from None
            rows = out.setdefault(row["unit"], {})
            if key in rows:
                raise UserError(f"{where}: duplicate row for unit {row['unit']!r} prompt_id {key[0]!r} "
                                f"sample_idx {key[1]}.")
            rows[key] = (lineno, {"prompt_id": key[0], "sample_idx": key[1], "n_tokens": n})
    return out


def _read_heldout(path: Path) -> tuple[list[str], list[str], dict[str, np.ndarray]]:
    """heldout/<unit>.jsonl -> pair ids, their sources, and margin / correct arrays [N]."""
    ids, sources, margin, correct = [], [], [], []
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        require_fields(row, HELDOUT_COLUMNS, where)
        margin.append(require_finite(row["margin"], f"{where}: field 'margin'"))
        c = require_finite(row["correct"], f"{where}: field 'correct'")
        if c not in (0, 0.5, 1):
            raise UserError(f"{where}: field 'correct': expected 0, 0.5 or 1, got {c!r}.")
        correct.append(c)
        ids.append(str(row["pair_id"]))
        sources.append(str(row["source"]))
    if not ids:
        raise UserError(f"{path}: no rows. Rerun the heldout stage of this unit.")
    if len(set(ids)) != len(ids):
        raise UserError(f"{path}: duplicate pair_id rows. Rerun the heldout stage of this unit.")
    order = np.argsort(ids, kind="stable")
    return ([ids[i] for i in order], [sources[i] for i in order],
            {"margin": np.asarray(margin, dtype=float)[order], "correct": np.asarray(correct, dtype=float)[order]})


def source_of(prompt_id: str) -> str:
    """The data source of a prompt: its id's part before the first ':' ("" when it has none)."""
    return prompt_id.split(":", 1)[0] if ":" in prompt_id else ""


def load_run(run_dir: str | Path) -> RunData:
    """Read and check every result file the report uses (a run directory or a results folder)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UserError(f"{root}: not a directory. Pass a run directory (runs/<experiment>) or a results folder.")
    manifest = load_manifest(root)
    read: list[Path] = [root / "manifest.json"]
    folder = not (root / "generations").is_dir()
    lengths = _read_lengths(root / "lengths.csv") if folder else {}
    if folder:
        read.append(root / "lengths.csv")

    grid: set[Key] | None = None
    grid_from: Path | None = None
    raw: dict[str, tuple[dict, dict[str, dict], list, Any]] = {}
    heldout_ref: tuple[Path, list[str], list[str]] | None = None
    trained = [u for u in manifest.units if u.loss is not None]
    heldout_present = [u for u in trained if (root / "heldout" / f"{u.unit}.jsonl").is_file()]
    if heldout_present and len(heldout_present) < len(trained):
        missing = next(u for u in trained if u not in heldout_present)
        raise UserError(f"{root / 'heldout' / (missing.unit + '.jsonl')}: not found, while other units have their "
                        f"held-out implicit rewards. Rerun `bdpo run` (its heldout stages).")
    for unit in manifest.units:
        if folder:
            gen_path = root / "lengths.csv"
            gens = lengths.get(unit.unit)
            if not gens:
                raise UserError(f"{gen_path}: no rows for unit {unit.unit!r} of manifest.json.")
        else:
            gen_path = root / "generations" / f"{unit.unit}.jsonl"
            gens = _read_keyed(gen_path, GENERATION_COLUMNS)
            for key, (lineno, row) in gens.items():
                if not isinstance(row["response"], str) or not isinstance(row["prompt"], str):
                    raise UserError(f"{gen_path}:{lineno}: fields 'prompt' and 'response' must be strings.")
            read.append(gen_path)
        for key, (lineno, row) in gens.items():
            n = row["n_tokens"]
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise UserError(f"{gen_path}:{lineno}: field 'n_tokens': expected an integer >= 0, got {n!r}.")
        if grid is None:
            grid, grid_from = set(gens), gen_path
        else:
            _same_keys(gen_path if not folder else Path(f"{gen_path} (unit {unit.unit})"), set(gens), grid, grid_from)
        scores = {}
        for scorer in manifest.scorers:
            score_path = root / "scores" / f"{unit.unit}.{scorer.name}.jsonl"
            rows = _read_keyed(score_path, ("prompt_id", "sample_idx", "score"))
            _same_keys(score_path, set(rows), set(gens), gen_path)
            scores[scorer.name] = {k: require_finite(r["score"], f"{score_path}:{ln}: field 'score'")
                                   for k, (ln, r) in rows.items()}
            read.append(score_path)
        log: list[dict[str, Any]] = []
        heldout: dict[str, np.ndarray] = {}
        if unit.loss is not None:
            log_path = (root / "train_logs" / f"{unit.unit}.jsonl" if folder
                        else root / "checkpoints" / unit.unit / "train_log.jsonl")
            log = _read_train_log(log_path)
            read.append(log_path)
            if heldout_present:
                path = root / "heldout" / f"{unit.unit}.jsonl"
                ids, sources, heldout = _read_heldout(path)
                if heldout_ref is None:
                    heldout_ref = (path, ids, sources)
                elif ids != heldout_ref[1]:
                    raise UserError(f"{path}: its pair_ids differ from {heldout_ref[0]}'s. Rerun the heldout stages.")
                read.append(path)
        raw[unit.unit] = ({k: r for k, (_, r) in gens.items()}, scores, log, heldout)

    assert grid is not None
    prompt_ids = sorted({pid for pid, _ in grid})
    sample_sets = {pid: sorted(i for p, i in grid if p == pid) for pid in prompt_ids}
    n_samples = len(sample_sets[prompt_ids[0]])
    for pid, idxs in sample_sets.items():
        if idxs != list(range(n_samples)):
            raise UserError(f"{grid_from}: prompt_id {pid!r} has sample_idx {idxs}, expected 0..{n_samples - 1} "
                            f"like every other prompt. Regenerate with a fixed number of samples.")

    def grid_array(values: dict[Key, float]) -> np.ndarray:
        return np.array([[values[(pid, k)] for k in range(n_samples)] for pid in prompt_ids], dtype=float)

    units = {}
    for unit in manifest.units:
        gens, scores, log, heldout = raw[unit.unit]
        units[unit.unit] = UnitData(
            unit=unit,
            scores={name: grid_array(v) for name, v in scores.items()},
            n_tokens=grid_array({k: r["n_tokens"] for k, r in gens.items()}),
            generations={} if folder else gens,
            train_log=log,
            heldout=heldout,
        )
    heldout = {}
    for scorer in manifest.scorers:
        path = root / "scorers" / scorer.name / "scorer.json"
        if path.is_file():
            block = read_json(path).get("heldout")
            if not isinstance(block, dict):
                raise UserError(f"{path}: field 'heldout': expected an object (the held-out accuracy). "
                                f"Retrain the scorer with `bdpo run`.")
            require_fields(block, HELDOUT_FIELDS, str(path))
            heldout[scorer.name] = {k: block[k] for k in HELDOUT_FIELDS}
    hashes = {str(p.relative_to(root)): sha256_file(p) for p in sorted(set(read))}
    # scorer.json also holds timings and the environment: hash the part read, so results.json stays
    # the same for the same results.
    hashes.update({f"scorers/{name}/scorer.json#heldout": sha256_json(block) for name, block in heldout.items()})
    # The manifest's timestamps change with every run: hash the rest, so results.json stays time-independent.
    hashes["manifest.json"] = sha256_json({k: v for k, v in read_json(root / "manifest.json").items()
                                           if k != "timestamps"})
    return RunData(root=root, manifest=manifest, prompt_ids=prompt_ids, n_samples=n_samples, units=units,
                   input_hashes=hashes, scorer_heldout=heldout,
                   prompt_sources=[source_of(pid) for pid in prompt_ids],
                   heldout_ids=heldout_ref[1] if heldout_ref else [],
                   heldout_sources=heldout_ref[2] if heldout_ref else [], results_folder=folder)
