"""Crash and resume: `bdpo run` is killed (SIGKILL) at random moments inside every stage type, restarted
until it finishes, and must end with exactly what an uninterrupted run writes.

The run is the smallest one that has every stage: real HH-RLHF pairs and the 260K-parameter TinyStories
Llama as policy and scorer backbone from ../shared (without it: the package's built-in safety pairs and
a tiny random Llama, tests/conftest.py pipeline_inputs), 1 seed x 2 variants x 4 steps with a Trainer
checkpoint every step, 6 evaluation prompts generated 2 per batch (so the generation side file has
rows to resume from), one trained Bradley-Terry scorer. Kills are aimed with the stage markers: the
test waits for `stages/<stage>.started` of the targeted stage type to appear in this attempt, then
kills the whole process group after a delay drawn from a seeded RNG (scaled to how long that stage
took in the uninterrupted run; a target that ends before its kill, as on a machine busier during the
uninterrupted run than now, gets it as the next stage starts, and later delays shrink to fit). After every kill, every file a finished stage recorded must read
back whole. At the end: train_log.jsonl, the weights (tensor by tensor), generations and scores row
for row, and results.json apart from `timestamps` equal the uninterrupted run's.

The helpers at the top (inputs, the uninterrupted run) are shared with test_determinism.py and
test_safety.py: the data file puts HTML/JS into every prompt, so the same run also checks escaping.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from harness.io import iter_jsonl, read_json, read_jsonl
from tests.conftest import REPO, pipeline_inputs

pytestmark = pytest.mark.slow

EXPERIMENT = "tiny"
# Untrusted text carried by every prompt (and so shown in the report's samples table).
PAYLOADS = ('<script>alert("pwned")</script>', "</table><h1>injected</h1>", '"><img src=x onerror=alert(1)>')
UNITS = ("reference", "dpo-seed0", "bdpo-seed0")
MAX_STEPS = 4  # per trained policy, with a Trainer checkpoint every step


def tiny_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The config (and its data file) of the tiny run, written once per session; returns the config.
    (Kept in a fixed folder of the session, not in a module global: pytest imports this file once as
    a test module and once more when the other test modules import it.)"""
    folder = tmp_path_factory.getbasetemp() / "tiny-inputs"
    path = folder / "tiny.yaml"
    if not path.exists():
        inputs = pipeline_inputs(tmp_path_factory, max_pairs=40)
        model = inputs.model
        folder.mkdir()
        rows = []
        for i, p in enumerate(inputs.pairs):
            prompt = [dict(m) for m in p.prompt]
            prompt[-1]["content"] += " " + PAYLOADS[i % len(PAYLOADS)]
            rows.append({"prompt": prompt, "chosen": p.chosen, "rejected": p.rejected})
        data = folder / "pairs.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        config = {
            "experiment": EXPERIMENT, "run_root": "runs", "seeds": [0],
            "model": {"path": str(model)},
            "data": {"sources": [{"format": "preference", "name": "hh", "path": str(data)}],
                     "split_seed": 0, "scorer_fraction": 0.3, "eval_prompts": 6},
            "train": {"max_steps": MAX_STEPS, "batch_size": 4, "learning_rate": 1.0e-3, "max_length": 96,
                      "max_prompt_length": 48, "save_every": 1},
            "variants": [{"name": "dpo", "loss": "dpo", "params": {"beta": 0.1}},
                         {"name": "bdpo", "loss": "bdpo", "params": {"beta": 0.1, "clip": 0.3}}],
            "generate": {"generator": "transformers", "max_new_tokens": 8, "batch_size": 2},
            "scorers": [{"name": "reward", "type": "bradley-terry", "path": "train:", "score_type": "reward",
                         "train_steps": 4, "train_batch_size": 4, "train_max_length": 96,
                         "train_backbone": str(model)}],
            "report": {"baseline": "dpo", "bootstrap_samples": 200},
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def bdpo_command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "run", str(config), *extra, "--no-progress"]


def bdpo_env() -> dict[str, str]:
    """The environment of a `bdpo` subprocess: the test session's cache (conftest), the repository on the
    path, one CPU thread (the models are tiny; on a shared 2-core machine more threads only contend), and
    no git repository: the provenance's git hash would change whenever someone commits to the working
    tree while runs that are compared are under way (git hash "unknown" in every run)."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "GIT_DIR": str(REPO / "no-such-git-dir")}


def run_tiny(config: Path, cwd: Path, *extra: str) -> Path:
    """An uninterrupted run of `config` from `cwd` (run_root is relative: <cwd>/runs); its run dir."""
    cwd.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(bdpo_command(config, *extra), check=False, cwd=cwd, capture_output=True, text=True,
                         timeout=900, env=bdpo_env())
    assert out.returncode == 0, out.stderr[-3000:]
    return cwd / "runs" / EXPERIMENT


def clean_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted tiny run, made once per session (the crash, determinism, bad-input and safety
    tests read it; tests that change it work on a copy)."""
    run_dir = tmp_path_factory.getbasetemp() / "tiny-clean" / "runs" / EXPERIMENT
    if not (run_dir / "stages" / "report.json").exists():
        run_tiny(tiny_inputs(tmp_path_factory), run_dir.parents[1])
    return run_dir


def without_timestamps(path: Path) -> dict:
    results = read_json(path)
    results.pop("timestamps")
    return results


# --------------------------------------------------------------------------------------------
# Stage markers: which stage is running, how long each took.
# --------------------------------------------------------------------------------------------


def kind_of(stage_file: Path, stages: Path) -> str:
    """'train' for stages/train/dpo-seed0.started, 'report' for stages/report.started."""
    return stage_file.relative_to(stages).parts[0].removesuffix(".started")


def in_flight(stages: Path, since: float) -> str | None:
    """The stage begun (marker written) after `since` and not yet recorded, if any."""
    for started in stages.rglob("*.started"):
        record = started.with_suffix(".json")
        if started.stat().st_mtime >= since and (not record.exists()
                                                  or record.stat().st_mtime < started.stat().st_mtime):
            return str(started.relative_to(stages).with_suffix(""))
    return None


def seconds_of(stages: Path, stage: str) -> float:
    """How long a finished stage took, marker to record."""
    started = stages / f"{stage}.started"
    return started.with_suffix(".json").stat().st_mtime - started.stat().st_mtime


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Per stage kind, the shortest time one of its stages took (marker to record) in a finished run:
    kills timed as fractions of it land inside the stage even when the machine got faster since."""
    stages = run_dir / "stages"
    took: dict[str, float] = {}
    for started in stages.rglob("*.started"):
        kind = kind_of(started, stages)
        took[kind] = min(took.get(kind, math.inf), seconds_of(stages, str(started.relative_to(stages).with_suffix(""))))
    return took


# --------------------------------------------------------------------------------------------
# What a killed run may leave behind.
# --------------------------------------------------------------------------------------------


def check_nothing_half_written(run_dir: Path) -> None:
    """Every output of a recorded stage, and every result file under its final name, reads back whole.

    Allowed to be cut short: append-only resume files (`*.partial.jsonl`, train_log.jsonl, whose
    readers drop a cut last line), Trainer checkpoint folders (resume picks only complete ones) and
    hidden temporary files.
    """
    for record in (run_dir / "stages").rglob("*.json"):
        for output in read_json(record)["outputs"]:
            assert (run_dir / output).exists(), f"{record} lists {output}, which is missing"
    for path in run_dir.rglob("*"):
        rel = path.relative_to(run_dir)
        if (not path.is_file() or any(part.startswith(".") for part in rel.parts)
                or any(part.startswith("checkpoint-") for part in rel.parts)
                or path.name.endswith(".partial.jsonl") or path.name == "train_log.jsonl"):
            continue
        if path.suffix == ".jsonl":
            list(iter_jsonl(path))
        elif path.suffix == ".json":
            read_json(path)
        elif path.suffix == ".safetensors":
            load_file(path)


def kill_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def written_since(path: Path, since: float) -> bool:
    try:
        return path.stat().st_mtime >= since
    except FileNotFoundError:
        return False


def anchor_ready(path: Path, since: float) -> bool:
    """`path` (or, a glob pattern, any file it matches) was written in this attempt and, a JSON file
    (a checkpoint's trainer_state.json, which Trainer writes in place), reads back whole."""
    if "*" in path.name:
        return any(written_since(p, since) for p in path.parent.glob(path.name))
    if not written_since(path, since):
        return False
    try:
        return path.suffix != ".json" or isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False


def partial_rows(run_dir: Path) -> int:
    return sum(len(p.read_text(encoding="utf-8").splitlines()) for p in run_dir.glob("generations/*.partial.jsonl"))


def checkpoints(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.glob("checkpoints/*/checkpoint-*"))


# Kills wanted per stage type: 12 in all. Train and generate kills cycle through anchors: the stage
# marker (None: model loading, tokenising, reference log-probs, saving), the first file of the work
# itself (train_log.jsonl: Trainer steps and checkpoints; the side file: generated batches) and, for
# training, the last step's checkpoint: that kill comes at once, between it and the final save, a
# window too short for a random delay to hit reliably (resuming there once trained a step too many).
WANTED = {"scorer": 1, "train": 4, "generate": 3, "score": 2, "report": 2}
LAST_CHECKPOINT = f"checkpoints/{{}}/checkpoint-{MAX_STEPS}/trainer_state.json"
# The report is the last stage: a kill that misses it has no next stage to land in. So its kills
# come at once when its temporary folder appears, while the report's files are written there.
REPORT_TEMP = ".report-new-*"
AT_ONCE = (LAST_CHECKPOINT, REPORT_TEMP)
ANCHORS = {"train": (None, "checkpoints/{}/train_log.jsonl", LAST_CHECKPOINT),
           "generate": (None, "generations/{}.jsonl.partial.jsonl"),
           "report": (REPORT_TEMP,)}


def crash_run(config: Path, cwd: Path, took: dict[str, float], seed: int) -> list[dict]:
    """Run `config` from `cwd`, killing it (WANTED kills per stage type) and restarting until it finishes.

    In each attempt the first stage that starts (its marker appears) and whose type still wants a
    kill is the target: the process group is killed a random time after the marker (or after the
    stage's work file appears), drawn from `seed`. The load on the machine changes how long a stage
    takes, so the test does not rely on the delays: a target that finishes before its kill gets the
    kill as the next stage starts instead, and later delays of its type scale with the time that
    target took. Returns one record per kill.
    """
    rng = random.Random(seed)
    took = dict(took)
    run_dir = cwd / "runs" / EXPERIMENT
    stages = run_dir / "stages"
    wanted = dict(WANTED)
    kills: list[dict] = []
    log_path = cwd / "crash.log"
    with open(log_path, "w") as log:
        for _attempt in range(3 * sum(WANTED.values())):
            since = time.time()
            proc = subprocess.Popen(bdpo_command(config), cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                    env=bdpo_env(), start_new_session=True)
            target, anchor, deadline, missed = None, None, None, False
            try:
                while proc.poll() is None:
                    stage = in_flight(stages, since) if stages.is_dir() else None
                    kind = stage.split("/")[0] if stage else None
                    if target is None and kind and wanted.get(kind, 0) > 0:
                        target = stage
                        anchors = ANCHORS.get(kind, (None,))
                        pattern = anchors[sum(k["target"].startswith(kind) for k in kills) % len(anchors)]
                        name = stage.split("/")[1] if "/" in stage else ""
                        anchor = run_dir / pattern.format(name) if pattern else None
                        delay = 0.0 if pattern in AT_ONCE else rng.uniform(0.05, 0.6) * took[kind]
                    if target is not None and deadline is None and (anchor is None or anchor_ready(anchor, since)):
                        deadline = time.time() + delay
                    elif target is not None and deadline is None and stage != target:
                        # The target ended before its work file appeared (an earlier kill had left it
                        # nothing to do but its record): aim at the next stage instead.
                        target, anchor = None, None
                    elif deadline is not None and stage is not None and stage != target:
                        missed = True  # the target ended before its kill: the kill lands as the next stage starts
                        break
                    if deadline is not None and time.time() >= deadline:
                        break
                    time.sleep(0.005)
            finally:
                if proc.poll() is None:
                    kill_group(proc)
            if proc.returncode == 0:
                return kills
            assert proc.returncode == -signal.SIGKILL, log_path.read_text()[-3000:]
            landed = in_flight(stages, since)
            kills.append({"target": target, "anchor": anchor.name if anchor else "marker", "delay": round(delay, 3),
                          "missed": missed, "landed": landed, "partial_rows": partial_rows(run_dir),
                          "checkpoints": checkpoints(run_dir)})
            if landed and wanted.get(landed.split("/")[0], 0) > 0:
                wanted[landed.split("/")[0]] -= 1
            if missed:
                kind = target.split("/")[0]
                took[kind] = min(took[kind], seconds_of(stages, target))
            check_nothing_half_written(run_dir)
    raise AssertionError(f"the run did not finish: {kills}")


# --------------------------------------------------------------------------------------------
# The test.
# --------------------------------------------------------------------------------------------


def test_killed_runs_resume_to_the_uninterrupted_results(tmp_path_factory):
    clean = clean_run(tmp_path_factory)
    config = tiny_inputs(tmp_path_factory)
    cwd = tmp_path_factory.mktemp("crashed")
    kills = crash_run(config, cwd, stage_seconds(clean), seed=20240611)
    crashed = cwd / "runs" / EXPERIMENT

    print("\n".join(json.dumps(k) for k in kills))
    assert len(kills) >= 10, kills
    landed = {k["landed"].split("/")[0] for k in kills if k["landed"]}
    assert {"train", "generate", "score", "report"} <= landed, kills
    # A rerun finds every stage fresh and nothing left behind by the crashes is taken for output.
    check_nothing_half_written(crashed)
    assert not list(crashed.rglob("*.partial.jsonl"))

    for unit in UNITS[1:]:
        rel = Path("checkpoints") / unit
        assert read_jsonl(crashed / rel / "train_log.jsonl") == read_jsonl(clean / rel / "train_log.jsonl"), unit
        got, want = load_file(crashed / rel / "model.safetensors"), load_file(clean / rel / "model.safetensors")
        assert got.keys() == want.keys()
        for name in want:
            assert got[name].equal(want[name]), f"{unit}: tensor {name} differs"
    for unit in UNITS:
        for rel in (f"generations/{unit}.jsonl", f"scores/{unit}.reward.jsonl"):
            assert read_jsonl(crashed / rel) == read_jsonl(clean / rel), rel
    assert without_timestamps(crashed / "results.json") == without_timestamps(clean / "results.json")
