"""manifest.json: what a run contains, as the report reads it (schema: docs/results-schema.md).

The pipeline writes `manifest.json` in the run directory; `load_manifest` checks it and returns
typed records. Errors are one-line `UserError`s naming the file and the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.io import read_json

# The untrained base policy's variant name (its single unit has seed null).
REFERENCE = "reference"
SCORE_TYPES = ("reward", "cost")


@dataclass(frozen=True)
class Unit:
    """One trained policy (`<variant>-seed<seed>`) or the reference (seed None, loss None)."""

    unit: str
    variant: str
    seed: int | None
    loss: str | None
    params: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    # Config fields this variant changes relative to its siblings, e.g. {"beta": 0.1, "clip": 0.3}.
    sweep: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scorer:
    name: str
    score_type: str  # "reward" (higher = better) or "cost" (lower = better; safe when <= threshold)
    threshold: float = 0.0


@dataclass(frozen=True)
class Manifest:
    experiment: str
    baseline: str
    units: tuple[Unit, ...]
    scorers: tuple[Scorer, ...]
    config: dict[str, Any]
    provenance: dict[str, Any]
    data_hashes: dict[str, Any]
    model_hash: str
    seeds: tuple[int, ...]
    timestamps: dict[str, Any]

    def variants(self) -> list[str]:
        """Variant names in manifest order."""
        return list(dict.fromkeys(u.variant for u in self.units))

    def units_of(self, variant: str) -> list[Unit]:
        """The variant's units, sorted by seed."""
        return sorted((u for u in self.units if u.variant == variant), key=lambda u: (u.seed is not None, u.seed or 0))

    def scorer(self, name: str) -> Scorer:
        return next(s for s in self.scorers if s.name == name)

    @property
    def reference(self) -> str | None:
        return REFERENCE if REFERENCE in self.variants() else None


def _get(obj: dict[str, Any], key: str, types: tuple[type, ...], where: str, default: Any = ...) -> Any:
    """obj[key] checked against `types` (bool is never accepted as a number)."""
    if key not in obj:
        if default is ...:
            raise UserError(f"{where}: missing field '{key}'. See docs/results-schema.md for the manifest schema.")
        return default
    value = obj[key]
    numeric = any(t in (int, float) for t in types)
    if not isinstance(value, types) or (isinstance(value, bool) and numeric and bool not in types):
        names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise UserError(f"{where}: field '{key}': expected {names}, got {value!r}.")
    return value


def _unit(d: Any, where: str) -> Unit:
    if not isinstance(d, dict):
        raise UserError(f"{where}: expected an object, got {d!r}.")
    name = _get(d, "unit", (str,), where)
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise UserError(f"{where}: field 'unit': {name!r} is not a plain file name (it names files in generations/).")
    sweep = _get(d, "sweep", (dict,), where, {})
    for key, value in sweep.items():
        if not isinstance(value, (str, int, float, bool)) or (isinstance(value, float) and not math.isfinite(value)):
            raise UserError(f"{where}: field 'sweep.{key}': expected a string, number or boolean, got {value!r}.")
    return Unit(unit=name, variant=_get(d, "variant", (str,), where), seed=_get(d, "seed", (int, type(None)), where),
                loss=_get(d, "loss", (str, type(None)), where, None), params=_get(d, "params", (dict,), where, {}),
                train=_get(d, "train", (dict,), where, {}), sweep=sweep)


def _scorer(d: Any, where: str) -> Scorer:
    if not isinstance(d, dict):
        raise UserError(f"{where}: expected an object, got {d!r}.")
    score_type = _get(d, "score_type", (str,), where)
    if score_type not in SCORE_TYPES:
        raise UserError(f"{where}: field 'score_type': {score_type!r} is not one of {', '.join(SCORE_TYPES)}.")
    threshold = float(_get(d, "threshold", (int, float), where, 0.0))
    if not math.isfinite(threshold):
        raise UserError(f"{where}: field 'threshold': expected a finite number, got {threshold!r}.")
    return Scorer(name=_get(d, "name", (str,), where), score_type=score_type, threshold=threshold)


def parse_manifest(data: Any, where: str = "manifest.json") -> Manifest:
    """Check a manifest object and build the typed records."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a JSON object at the top level.")
    raw_units = _get(data, "units", (list,), where)
    raw_scorers = _get(data, "scorers", (list,), where)
    if not raw_units:
        raise UserError(f"{where}: field 'units' is empty; the run has nothing to report.")
    if not raw_scorers:
        raise UserError(f"{where}: field 'scorers' is empty; the report needs at least one scorer.")
    units = tuple(_unit(d, f"{where}: units[{i}]") for i, d in enumerate(raw_units))
    scorers = tuple(_scorer(d, f"{where}: scorers[{i}]") for i, d in enumerate(raw_scorers))

    seen_units: set[str] = set()
    seen_seeds: set[tuple[str, int | None]] = set()
    for i, u in enumerate(units):
        if u.unit in seen_units:
            raise UserError(f"{where}: units[{i}]: duplicate unit name {u.unit!r}.")
        if (u.variant, u.seed) in seen_seeds:
            raise UserError(f"{where}: units[{i}]: variant {u.variant!r} lists seed {u.seed} twice.")
        first = next(v for v in units if v.variant == u.variant)
        if u.sweep != first.sweep or u.loss != first.loss:
            raise UserError(f"{where}: units[{i}]: loss/sweep differ from unit {first.unit!r} of the same variant "
                            f"{u.variant!r}; every seed of a variant must share them.")
        seen_units.add(u.unit)
        seen_seeds.add((u.variant, u.seed))
    names = [s.name for s in scorers]
    if len(set(names)) != len(names):
        raise UserError(f"{where}: field 'scorers': duplicate scorer names {names}.")

    baseline = _get(data, "baseline", (str,), where)
    variants = list(dict.fromkeys(u.variant for u in units))
    if baseline not in variants:
        raise UserError(f"{where}: field 'baseline': {baseline!r} is not a variant of this run "
                        f"(variants: {', '.join(variants)}).")
    seeds = _get(data, "seeds", (list,), where, sorted({u.seed for u in units if u.seed is not None}))
    return Manifest(
        experiment=_get(data, "experiment", (str,), where),
        baseline=baseline,
        units=units,
        scorers=scorers,
        config=_get(data, "config", (dict,), where, {}),
        provenance=_get(data, "provenance", (dict,), where, {}),
        data_hashes=_get(data, "data_hashes", (dict,), where, {}),
        model_hash=_get(data, "model_hash", (str,), where, ""),
        seeds=tuple(seeds),
        timestamps=_get(data, "timestamps", (dict,), where, {}),
    )


def load_manifest(run_dir: str | Path) -> Manifest:
    """Read and check `<run_dir>/manifest.json`."""
    path = Path(run_dir) / "manifest.json"
    return parse_manifest(read_json(path), str(path))
