"""The run directory: stage fingerprints (caching and resume), the single-writer lock, and the lock
of each stage (the jobs of a parallel run, harness/executors.py).

A stage is identified by a name such as `train/dpo-seed0`. Before running it, the pipeline computes
the fingerprint of everything the stage reads (config fields, data hashes, upstream fingerprints,
package versions). After the stage's outputs are written (atomically), its record
`stages/<name>.json` is written LAST: a crash at any earlier point leaves no record, so the stage
reruns. A stage is fresh when its record's fingerprint matches and all its outputs exist.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

from harness.errors import UserError
from harness.io import atomic_write_json, atomic_write_text, file_lock, read_json, sha256_json


@dataclass(frozen=True)
class StageRecord:
    name: str
    fingerprint: str
    outputs: tuple[str, ...]  # paths relative to the run directory


# Hidden temporaries that a writer killed mid-write leaves: an atomic file write's
# `.<name>.XXXX.tmp` (harness.io), a scorer's `.<name>.<pid>.tmp/` (harness.io.atomic_dir), and a
# report swap's `.<name>-new-XXXX/` and `.<name>-old-XXXX/` (reports.build).
STALE_SUFFIX = ".tmp"
STALE_MARKERS = ("-new-", "-old-")


class RunDir:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, *parts: str) -> Path:
        """A path inside the run directory; refuses names that would escape it."""
        p = self.root.joinpath(*parts).resolve()
        if not p.is_relative_to(self.root.resolve()):
            raise UserError(f"'{'/'.join(parts)}' would write outside the run directory {self.root}.")
        return p

    def _record_path(self, stage: str) -> Path:
        return self.path("stages", f"{stage}.json")

    @staticmethod
    def fingerprint(inputs: dict[str, Any]) -> str:
        return sha256_json(inputs)

    def is_fresh(self, stage: str, fingerprint: str) -> bool:
        rec = self._record_path(stage)
        if not rec.exists():
            return False
        try:
            data = read_json(rec)
        except UserError:
            return False
        if data.get("fingerprint") != fingerprint:
            return False
        return all(self.path(o).exists() for o in data.get("outputs", []))

    def record(self, stage: str, fingerprint: str, inputs: dict[str, Any], outputs: list[str]) -> None:
        """Mark a stage finished. Call only after every output is in place."""
        missing = [o for o in outputs if not self.path(o).exists()]
        if missing:
            raise RuntimeError(f"stage {stage} finished without writing {missing}")
        atomic_write_json(self._record_path(stage), {
            "stage": stage, "fingerprint": fingerprint, "inputs": inputs, "outputs": sorted(outputs),
        })

    def begin(self, stage: str, fingerprint: str, workdirs: list[str]) -> None:
        """Note that `stage` starts with `fingerprint`. Work left in `workdirs` by an interrupted
        attempt with the SAME fingerprint is kept (training and generation resume from it); work
        from an attempt with another fingerprint (the config changed since) is removed first."""
        started = self.path("stages", f"{stage}.started")
        if not started.exists() or started.read_text().strip() != fingerprint:
            for d in workdirs:
                p = self.path(d)
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        atomic_write_text(started, fingerprint + "\n")

    def stage_lock(self, stage: str, on_wait: Callable[[str], None] | None = None) -> ContextManager[None]:
        """The lock a job holds while it writes `stage` (`.locks/<stage>.lock`): two jobs of a parallel
        run, or a job Ray retried while the first attempt still runs, never write one stage at once.
        `on_wait` gets the holder's pid when the lock is taken."""
        return file_lock(self.path(".locks", f"{stage}.lock"), on_wait)

    def remove_stale_temporaries(self) -> int:
        """Delete what killed writers left behind; returns how many entries went. Call only while
        holding the RunLock: no writer runs then, so every temporary is stale. A report swap killed
        after setting the old report aside and before moving the new one in leaves the old report
        in its `-old-` folder: it is moved back first, so nothing the user had is lost."""
        def is_stale(name: str) -> bool:
            return name.startswith(".") and (name.endswith(STALE_SUFFIX) or any(m in name for m in STALE_MARKERS))

        stale = []
        for folder, dirs, files in os.walk(self.root):
            stale += [Path(folder) / name for name in dirs + files if is_stale(name)]
            dirs[:] = [d for d in dirs if not is_stale(d)]  # not into a folder that goes anyway
        for p in stale:
            if "-old-" in p.name and p.is_dir():
                for kept in p.iterdir():
                    if not (p.parent / kept.name).exists():
                        os.replace(kept, p.parent / kept.name)
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        return len(stale)

    def stage_fingerprint(self, stage: str) -> str | None:
        rec = self._record_path(stage)
        return read_json(rec).get("fingerprint") if rec.exists() else None


class RunLock:
    """An exclusive lock on a run directory (flock: released by the OS even after SIGKILL)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.path = Path(root) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(
                f"{self.path.parent}: another bdpo process (pid {holder}) is writing this run directory. "
                "Wait for it to finish, or use another experiment name."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
