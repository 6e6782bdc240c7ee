"""Multi-process training on this CPU machine: `accelerate launch` with 2 processes (DDP over gloo).

accelerate 1.15's `--cpu` flag takes its single-process launcher (`--cpu --num_processes 2` runs ONE
process); `--multi_gpu` on a machine without GPUs starts torchrun workers that fall back to CPU and
gloo, which is the DDP run these tests check:
- its weights and train log equal a single-process run with the same global batch (2 x 4 = 8);
- only rank 0 writes the checkpoint, the train log and the reference cache, and the reference pass
  runs once (rank 1 reads rank 0's cache);
- a SIGKILL of the whole launch after a checkpoint, then the same command, resumes and ends with
  the uninterrupted weights;
- an FSDP launch is refused on CPU (accelerate would silently run DDP instead).
Real model (stories260k), real HH pairs, real processes: nothing mocked. Each rank runs one
training unit (tests/train_unit.py, `trainers.trainer.train_policy`); the pipeline's commands
(`bdpo run`, `bdpo train`) hold one run-directory lock per process and are not multi-process yet.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from harness.errors import UserError
from tests.conftest import shared_path

pytestmark = pytest.mark.slow

STEPS = 8
LOG_FIELDS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
              "logps/rejected", "log_grad_ratio/mean")


def _config(tmp: Path) -> Path:
    hh = shared_path("data", "hh-rlhf")
    cfg = {
        "experiment": "multiprocess", "seeds": [0],
        "model": {"path": str(shared_path("models", "stories260k")), "dtype": "float32"},
        "data": {"sources": [{"format": "hh-rlhf", "name": "harmless", "max_pairs": 80,
                              "path": str(hh / "harmless-base" / "test.jsonl.gz")}],
                 "split_seed": 0, "scorer_fraction": 0.0, "eval_prompts": 8},
        "train": {"max_steps": STEPS, "batch_size": 8, "learning_rate": 1.0e-3, "warmup_ratio": 0.0,
                  "max_length": 96, "max_prompt_length": 48, "save_every": 1},
        "variants": [{"name": "bdpo", "loss": "bdpo", "params": {"beta": 0.1, "clip": 0.3}}],
        "report": {"baseline": "bdpo"},
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(config: Path, out: Path, processes: int) -> list[str]:
    train = ["-m", "tests.train_unit", str(config), str(out)]
    if processes == 1:
        return [sys.executable, *train]
    # train.batch_size is per process: 2 x 4 is the single run's global batch of 8.
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()), *train,
            f"train.batch_size={8 // processes}"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run(config: Path, out: Path, processes: int) -> subprocess.CompletedProcess:
    done = subprocess.run(_command(config, out, processes), capture_output=True, text=True, timeout=900, env=_env())
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 0, errors or done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("multiprocess")
    config = _config(tmp)
    single = _run(config, tmp / "single", 1)
    ddp = _run(config, tmp / "ddp", 2)
    return {"tmp": tmp, "config": config, "single": tmp / "single" / "bdpo-seed0", "ddp": tmp / "ddp" / "bdpo-seed0",
            "ddp_output": ddp.stdout + ddp.stderr, "single_output": single.stdout + single.stderr}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert sorted(wa) == sorted(wb)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=k)


def _log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def test_two_processes_equal_one_with_the_same_global_batch(runs):
    _assert_same_weights(runs["single"], runs["ddp"])
    single, ddp = _log(runs["single"]), _log(runs["ddp"])
    # One row per step: a second writer would double them.
    assert [r["step"] for r in ddp] == [r["step"] for r in single] == list(range(1, STEPS + 1))
    for a, b in zip(single, ddp):
        for field in LOG_FIELDS:
            assert b[field] == pytest.approx(a[field], rel=1e-4, abs=1e-5), (a["step"], field)
    record = json.loads((runs["ddp"] / "train_record.json").read_text())
    assert record["world_size"] == 2 and record["distributed_type"] == "MULTI_CPU"


def test_the_reference_pass_runs_once_and_rank_0_writes(runs):
    out = " ".join(runs["ddp_output"].split())  # rich wraps long log lines
    assert out.count("computed (process 1 of 2)") == 1, out[-3000:]
    assert out.count("read from the cache (process 2 of 2)") == 1, out[-3000:]
    assert "computed (process 2 of 2)" not in out
    assert len(list((runs["tmp"] / "ddp" / ".cache" / "ref-logps").iterdir())) == 1
    # No temporary left by a second writer of the checkpoint or the log.
    leftovers = [p.name for p in runs["ddp"].rglob(".*")]
    assert leftovers == [], leftovers


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_weights(runs):
    out = runs["tmp"] / "killed"
    unit = out / "bdpo-seed0"
    launch = subprocess.Popen(_command(runs["config"], out, 2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=_env(), start_new_session=True)
    # Kill the launcher and both workers once a checkpoint is complete (trainer_state.json is its last file).
    deadline = time.monotonic() + 600
    while not any((p / "trainer_state.json").exists() for p in unit.glob("checkpoint-*")):
        assert launch.poll() is None, "the launch ended before writing a checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.05)
    # torchrun starts its workers in process groups of their own: kill the whole tree.
    tree = [launch_process := psutil.Process(launch.pid), *launch_process.children(recursive=True)]
    for p in tree:
        p.send_signal(signal.SIGKILL)
    launch.wait()
    psutil.wait_procs(tree, timeout=30)
    assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    if (unit / "train_record.json").exists():
        pytest.fail("the kill landed after training finished: nothing was resumed")
    resumed = _run(runs["config"], out, 2)
    assert "resuming from" in " ".join((resumed.stdout + resumed.stderr).split())
    _assert_same_weights(runs["single"], unit)
    assert [r["step"] for r in _log(unit)] == list(range(1, STEPS + 1))


def test_fsdp_is_refused_where_accelerate_would_run_ddp_instead(monkeypatch):
    from trainers.trainer import _check_distributed

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(UserError, match="FSDP was asked for.*only on GPUs"):
        _check_distributed()
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    _check_distributed()
