"""File I/O every stage shares: atomic writes, JSONL with line-numbered errors, content hashes.

Every artifact is written to a temporary file in the same directory and renamed into place, so a
crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from harness.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    # mkstemp creates 0600 files; results should get the usual permissions (0666 minus umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_name, 0o666 & ~umask)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder `.<name>.<pid>.tmp` next to `path`; move it onto `path` only if
    the block succeeds. A non-empty `path` is refused unless `overwrite` (it is then replaced)."""
    final = Path(path)
    if final.exists() and any(final.iterdir()) and not overwrite:
        raise UserError(f"{final}: already exists and is not empty. Choose another folder (--out), or pass "
                        "--overwrite to replace it.")
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created, holding the holder's pid) for the block; wait while
    another process holds it, after telling `on_wait` who does. flock: the OS releases it when its
    holder dies, even by SIGKILL, so a killed holder never blocks the next one."""
    lock = Path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait(os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the lock


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def _reject_nonfinite(value: float) -> Any:
    raise ValueError(f"non-finite number {value!r}")


def to_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys); NaN/inf are refused rather than written as invalid JSON."""
    return json.dumps(obj, sort_keys=True, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, to_json(obj))


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r, sort_keys=True, allow_nan=False, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_text(path, text)


def open_text(path: str | os.PathLike, mode: str = "rt"):
    """Open a UTF-8 text file (mode "rb": its bytes), transparently gunzipping `.gz`; errors name the file."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: file not found. Check the path in your config or command line.")
    encoding = None if "b" in mode else "utf-8"
    if p.suffix == ".gz":
        return gzip.open(p, mode, encoding=encoding)
    return open(p, mode, encoding=encoding)


def read_json(path: str | os.PathLike) -> Any:
    """Parse a whole JSON file; malformed content is a UserError naming file and line."""
    try:
        with open_text(path) as f:
            return json.loads(f.read(), parse_constant=_reject_nonfinite)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg}). Fix or regenerate the file.") from None
    except ValueError as e:  # non-finite constants
        raise UserError(f"{path}: {e}. Replace it with a finite number.") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start}). Re-encode the file as UTF-8.") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"{path}: cannot read ({e}). The file may be truncated or not gzip; re-download it.") from None


def _nonfinite_field(line: str) -> str:
    """The text " field 'NAME':" for the first top-level key holding NaN/Infinity, so errors name it."""
    obj = json.loads(line)  # the stdlib parser accepts NaN/Infinity by default
    bad = [k for k, v in obj.items() if isinstance(v, float) and not math.isfinite(v)] if isinstance(obj, dict) else []
    return f" field '{bad[0]}':" if bad else ""


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line_number, object) for each non-blank line; errors name file and line."""
    lineno = 0
    try:
        # Bytes, decoded line by line: a decoding error then names its own line, not its 8 KB block's first.
        with open_text(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise UserError(f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start} of the line). "
                                    "Re-encode the file as UTF-8.") from None
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line, parse_constant=_reject_nonfinite)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: invalid JSON ({e.msg}). Fix or remove that line.") from None
                except ValueError as e:
                    raise UserError(f"{path}:{lineno}:{_nonfinite_field(line)} {e}. Replace it with a finite number.") from None
                if not isinstance(obj, dict):
                    raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}.")
                yield lineno, obj
    except (EOFError, gzip.BadGzipFile, OSError) as e:
        raise UserError(
            f"{path}:{lineno + 1}: cannot read ({e}). The file may be truncated; re-download it."
        ) from None


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    return [obj for _, obj in iter_jsonl(path)]


def require_finite(value: Any, where: str) -> float:
    """A float, or a UserError naming `where` when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: expected a finite number, got {value!r}.")
    return float(value)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_tree(path: str | os.PathLike, files: Iterable[Path] | None = None) -> str:
    """Hash of a file, or of a directory's files (relative names and contents, sorted); `files`, when
    given, are the files of the directory to hash instead of all of them."""
    root = Path(path)
    if root.is_file():
        return sha256_file(root)
    h = hashlib.sha256()
    if files is None:
        files = (q for q in root.rglob("*") if q.is_file() and not q.name.startswith("."))
    for p in sorted(files):
        h.update(str(p.relative_to(root)).encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-able object, independent of key order."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, allow_nan=False).encode())
