"""Many stages at once: `bdpo run --jobs 2` (local subprocesses) and `bdpo run --executor ray` (a
local Ray cluster of 2 CPUs started by the test) write what a sequential run writes, and a job killed
inside a stage leaves that stage unrecorded: a rerun (local) or Ray's retry redoes it.

The run is the tiny run of test_crash_resume (every stage kind; its uninterrupted sequential run is
shared with test_determinism). The kill is aimed without timing: the test holds the lock of the stage
`train/dpo-seed0` (RunDir.stage_lock, as a job writing it would), so the job given that stage waits
inside it and says so with its pid; the test kills that process, then lets the lock go.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from harness.cli import main
from harness.config import ResourcesConfig
from harness.io import to_json
from harness.provenance import STAGE_CODE
from harness.rundir import RunDir
from tests.test_crash_resume import EXPERIMENT, bdpo_command, bdpo_env, clean_run, run_tiny, tiny_inputs, \
    without_timestamps
from tests.test_determinism import SAME_BYTES

TARGET = "train/dpo-seed0"


def assert_same_results(expected: Path, got: Path) -> None:
    assert to_json(without_timestamps(got / "results.json")) == to_json(without_timestamps(expected / "results.json"))
    for rel in SAME_BYTES:
        assert (got / rel).read_bytes() == (expected / rel).read_bytes(), rel


def kill_the_job_of(stage: str, config: Path, cwd: Path, *options: str) -> tuple[int, str, int]:
    """Start `bdpo run config` from `cwd` with `options` while holding `stage`'s lock; kill (SIGKILL) the
    job that waits for it, then release the lock and let the run end. Returns (exit code, its output,
    the killed pid)."""
    run = cwd / "runs" / EXPERIMENT
    proc = subprocess.Popen(bdpo_command(config, *options), cwd=cwd, env=bdpo_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    watchdog = threading.Timer(1200, proc.kill)  # only a safety net: a broken run would otherwise hang the test
    watchdog.start()
    seen: list[str] = []
    waiting = re.compile(rf"stage {re.escape(stage)}: waiting for pid \S+, which is writing it \(this job is pid (\d+)\)")
    try:
        with RunDir(run).stage_lock(stage):
            for line in proc.stdout:
                seen.append(line)
                found = waiting.search(line)
                if found:
                    pid = int(found.group(1))
                    os.kill(pid, signal.SIGKILL)
                    break
            else:
                raise AssertionError("the run ended before a job waited for the stage:\n" + "".join(seen[-40:]))
        seen.append(proc.stdout.read())
        return proc.wait(), "".join(seen), pid
    finally:
        watchdog.cancel()
        proc.kill()


@pytest.fixture
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny run's config and the directory of its sequential run."""
    return tiny_inputs(tmp_path_factory), clean_run(tmp_path_factory)


@pytest.mark.slow
def test_two_local_jobs_equal_a_sequential_run_and_a_killed_job_is_redone_by_a_rerun(tiny, tmp_path):
    config, sequential = tiny
    run = tmp_path / "runs" / EXPERIMENT
    code, out, _ = kill_the_job_of(TARGET, config, tmp_path, "--jobs", "2")
    assert code == 2, out[-3000:]
    assert f"stage {TARGET}: its job was killed by signal 9" in out
    assert not (run / "stages" / f"{TARGET}.json").exists()
    assert (run / "stages" / "data.json").exists()  # what finished is kept
    run_tiny(config, tmp_path, "--jobs", "2")
    assert_same_results(sequential, run)


@pytest.mark.slow
def test_a_two_cpu_ray_cluster_equals_a_sequential_run_and_redoes_a_killed_workers_stage(tiny, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    config, sequential = tiny
    # The cluster's processes (and so its workers) get the environment the `bdpo` subprocesses get.
    for name, value in bdpo_env().items():
        if name in ("PYTHONPATH", "OMP_NUM_THREADS", "GIT_DIR"):
            monkeypatch.setenv(name, value)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        address = ray.get_runtime_context().gcs_address
        run = tmp_path / "runs" / EXPERIMENT
        code, out, killed = kill_the_job_of(TARGET, config, tmp_path, "--executor", "ray", "--ray-address", address)
        assert code == 0, out[-3000:]
    finally:
        ray.shutdown()
    # Ray ran the stage again in a new worker: it holds the stage's lock file now.
    assert (run / ".locks" / f"{TARGET}.lock").read_text() != str(killed)
    assert_same_results(sequential, run)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_ray_cluster_is_one_line_before_any_stage(tmp_path, capsys):
    pytest.importorskip("ray")
    address = f"127.0.0.1:{free_port()}"
    assert main(["run", "--executor", "ray", "--ray-address", address, f"run_root={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --executor ray: no Ray cluster reachable at") and len(err.splitlines()) == 1, err
    assert not any(tmp_path.iterdir())


def test_more_jobs_than_devices_is_one_line_before_any_stage(tmp_path, capsys):
    jobs = len(os.sched_getaffinity(0)) + 1
    assert main(["run", "--jobs", str(jobs), f"run_root={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --jobs {jobs}: this machine has ") and len(err.splitlines()) == 1, err
    assert not any(tmp_path.iterdir())


def test_every_stage_kind_has_its_resources():
    assert set(ResourcesConfig.__dataclass_fields__) == set(STAGE_CODE)
