"""Run directory: fingerprint records written last, freshness, path containment, the lock."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.errors import UserError
from harness.rundir import RunDir, RunLock


def test_stage_is_fresh_only_with_matching_fingerprint_and_outputs(tmp_path):
    run = RunDir(tmp_path)
    fp = RunDir.fingerprint({"beta": 0.1})
    assert not run.is_fresh("train/a", fp)
    run.path("out.txt").write_text("x")
    run.record("train/a", fp, {"beta": 0.1}, ["out.txt"])
    assert run.is_fresh("train/a", fp)
    assert not run.is_fresh("train/a", RunDir.fingerprint({"beta": 0.2}))
    run.path("out.txt").unlink()
    assert not run.is_fresh("train/a", fp)


def test_record_refuses_missing_outputs(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(RuntimeError, match="without writing"):
        run.record("s", "f", {}, ["nothing.txt"])


def test_paths_cannot_escape(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(UserError, match="outside the run directory"):
        run.path("..", "evil.txt")


def test_lock_excludes_a_second_process(tmp_path):
    code = (
        "import sys; from harness.rundir import RunLock; from harness.errors import UserError\n"
        f"try:\n    RunLock(r'{tmp_path}').__enter__()\nexcept UserError as e:\n    print(e); sys.exit(3)\n"
    )
    with RunLock(tmp_path):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.returncode == 3 and "another bdpo process" in out.stdout
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0


def test_begin_keeps_same_fingerprint_work_and_clears_other(tmp_path):
    run = RunDir(tmp_path)
    run.begin("train/a", "fp1", ["ckpt/a"])
    run.path("ckpt/a").mkdir(parents=True)
    (run.path("ckpt/a") / "partial.bin").write_text("x")
    run.begin("train/a", "fp1", ["ckpt/a"])  # interrupted, same inputs: resume
    assert (run.path("ckpt/a") / "partial.bin").exists()
    run.begin("train/a", "fp2", ["ckpt/a"])  # config changed: stale partial work goes
    assert not run.path("ckpt/a").exists()


def test_atomic_writes_get_normal_permissions(tmp_path):
    from harness.io import atomic_write_text

    atomic_write_text(tmp_path / "f.txt", "x")
    assert (tmp_path / "f.txt").stat().st_mode & 0o044 == 0o044  # group/other can read


def test_stale_temporaries_are_removed_and_a_set_aside_report_restored(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "scores").mkdir()
    (tmp_path / "scores" / "a.reward.jsonl").write_text("{}\n")
    (tmp_path / "scores" / ".a.reward.jsonl.x1y2.tmp").write_text("{")  # an atomic write, killed
    (tmp_path / "scorers" / ".reward.123.tmp").mkdir(parents=True)  # a scorer save, killed
    (tmp_path / "scorers" / ".reward.123.tmp" / "model.safetensors").write_bytes(b"x")
    (tmp_path / ".report-new-abc").mkdir()  # a report build, killed before its swap
    # A swap killed after the old report was set aside: report/ is gone, the old one waits in -old-.
    (tmp_path / ".report-old-def" / "report").mkdir(parents=True)
    (tmp_path / ".report-old-def" / "report" / "index.html").write_text("old report")
    (tmp_path / ".lock").write_text("")
    assert run.remove_stale_temporaries() == 4
    assert (tmp_path / "report" / "index.html").read_text() == "old report"
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert left == [".lock", "report", "report/index.html", "scorers", "scores", "scores/a.reward.jsonl"]
    assert run.remove_stale_temporaries() == 0
