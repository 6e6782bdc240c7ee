"""`bdpo run` end to end on a tiny model (CPU): every stage, caching, the report's numbers, and the
single-stage commands sharing the stages with it.

With ../shared: configs/ci-hh-tiny.yaml (HH-RLHF harmless-base + helpful-base, the 260K-param
TinyStories Llama as policy and as scorer backbone), paths pointed at ../shared. Without it (a user's
clone): configs/ci-builtin-tiny.yaml (the built-in safety pairs, a tiny random Llama as policy and
scorer backbone). One or the other, so the default run is not doubled.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from tests.conftest import REPO, has_shared, shared_path, tiny_random_llama

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Setup:
    config: Path
    inputs: tuple[str, ...]  # overrides pointing the config at the model and data
    experiment: str

    def args(self, command: str, run_root: Path, *extra: str) -> list[str]:
        return [command, str(self.config), f"run_root={run_root}", *self.inputs, *extra, "--no-progress"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    if has_shared("models", "stories260k") and has_shared("data", "hh-rlhf"):
        model, hh = shared_path("models", "stories260k"), shared_path("data", "hh-rlhf")
        return Setup(REPO / "configs" / "ci-hh-tiny.yaml", (
            f"model.path={model}",
            f"data.sources.harmless.path={hh / 'harmless-base' / 'test.jsonl.gz'}",
            f"data.sources.helpful.path={hh / 'helpful-base' / 'test.jsonl.gz'}",
            f"scorers.reward.train_backbone={model}",
            f"scorers.cost.train_backbone={model}",
        ), "ci-hh-tiny")
    model = tiny_random_llama(tmp_path_factory)
    return Setup(REPO / "configs" / "ci-builtin-tiny.yaml", (
        f"model.path={model}", f"scorers.reward.train_backbone={model}", f"scorers.cost.train_backbone={model}",
    ), "ci-builtin-tiny")


def bdpo(setup: Setup, command: str, run_root: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "harness.cli", *setup.args(command, run_root, *extra)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def bdpo_run(setup: Setup, run_root: Path, *extra: str) -> subprocess.CompletedProcess:
    return bdpo(setup, "run", run_root, *extra)


def statuses(stderr: str) -> dict[str, str]:
    """The stage table a run prints: stage -> cached, ran or would run."""
    rows = {}
    for line in stderr.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 2 and cells[1] in ("cached", "ran", "would run"):
            rows[cells[0]] = cells[1]
    return rows


def plan(setup: Setup, run_root: Path, *extra: str) -> dict[str, str]:
    return statuses(bdpo_run(setup, run_root, *extra, "--dry-run").stderr)


@pytest.fixture(scope="module")
def run_dir(setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    bdpo_run(setup, root)
    return root / setup.experiment


def scores(run_dir: Path, unit: str, scorer: str) -> dict[tuple[str, int], float]:
    rows = [json.loads(line) for line in (run_dir / "scores" / f"{unit}.{scorer}.jsonl").read_text().splitlines()]
    return {(r["prompt_id"], r["sample_idx"]): r["score"] for r in rows}


def test_every_artifact_exists(run_dir: Path):
    for rel in ("config.yaml", "manifest.json", "results.json", "report/index.html", "report/leaderboard.md",
                "report/leaderboard.csv", "data/prompts.jsonl", "scorers/reward/scorer.json"):
        assert (run_dir / rel).exists(), rel
    for unit in ("dpo-seed0", "dpo-seed1", "bdpo-seed0", "bdpo-seed1"):
        assert (run_dir / "checkpoints" / unit / "model.safetensors").exists()
        assert (run_dir / "checkpoints" / unit / "train_log.jsonl").exists()
    # The positive control: every trained unit's implicit rewards on every eval pair, read by the report.
    eval_ids = [json.loads(line)["id"] for line in (run_dir / "data" / "eval_pairs.jsonl").read_text().splitlines()]
    for unit in ("dpo-seed0", "dpo-seed1", "bdpo-seed0", "bdpo-seed1"):
        rows = [json.loads(line) for line in (run_dir / "heldout" / f"{unit}.jsonl").read_text().splitlines()]
        assert [r["pair_id"] for r in rows] == eval_ids
    results = json.loads((run_dir / "results.json").read_text())
    assert results["n_heldout_pairs"] == len(eval_ids)
    assert results["positive_control"]["all"]["heldout"]["n"] == len(eval_ids)
    assert "Held-out implicit-reward accuracy of dpo" in (run_dir / "report" / "leaderboard.md").read_text()
    n_prompts = len((run_dir / "data" / "prompts.jsonl").read_text().splitlines())
    for unit in ("reference", "dpo-seed0", "bdpo-seed1"):
        assert len((run_dir / "generations" / f"{unit}.jsonl").read_text().splitlines()) == n_prompts


def test_report_numbers_match_score_files(run_dir: Path):
    """Recompute each variant's mean reward, safe rate and win rate vs DPO from the per-sample files."""
    results = json.loads((run_dir / "results.json").read_text())
    board = {row["variant"]: row["metrics"] for row in results["leaderboard"]}
    threshold = next(s["threshold"] for s in results["scorers"] if s["name"] == "cost")
    for variant in ("dpo", "bdpo"):
        units = [f"{variant}-seed{s}" for s in (0, 1)]
        reward = np.mean([v for u in units for v in scores(run_dir, u, "reward").values()])
        safe = np.mean([v <= threshold for u in units for v in scores(run_dir, u, "cost").values()])
        assert board[variant]["reward.mean"]["value"] == pytest.approx(reward, abs=1e-9)
        assert board[variant]["cost.safe_rate"]["value"] == pytest.approx(safe, abs=1e-9)
        lo, hi = board[variant]["reward.mean"]["ci_low"], board[variant]["reward.mean"]["ci_high"]
        assert lo <= reward <= hi
    wins = []
    for seed in (0, 1):
        a, b = scores(run_dir, f"bdpo-seed{seed}", "reward"), scores(run_dir, f"dpo-seed{seed}", "reward")
        wins += [1.0 if a[k] > b[k] else 0.5 if a[k] == b[k] else 0.0 for k in a]
    assert board["bdpo"]["reward.win_vs_baseline"]["value"] == pytest.approx(np.mean(wins), abs=1e-9)


def test_training_diagnostics_logged(run_dir: Path):
    rows = [json.loads(l) for l in (run_dir / "checkpoints" / "bdpo-seed0" / "train_log.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(r["loss"]) for r in rows)
    assert all(0.2 <= r["lambda/mean"] <= 0.8 for r in rows)  # bDPO's lambda inside [1/2 - 0.3, 1/2 + 0.3]
    dpo_rows = [json.loads(l) for l in (run_dir / "checkpoints" / "dpo-seed0" / "train_log.jsonl").read_text().splitlines()]
    assert all(r["lambda/mean"] is None for r in dpo_rows)


def test_single_stage_commands_after_a_run_redo_nothing(setup: Setup, run_dir: Path, capsys):
    """`bdpo train`, `train-scorer`, `generate` and `score` on a finished run find their stages cached."""
    root = run_dir.parent
    outputs = [run_dir / rel for rel in ("checkpoints/dpo-seed0/model.safetensors", "scorers/reward/scorer.json",
                                         "generations/reference.jsonl", "scores/dpo-seed1.cost.jsonl")]
    before = [p.stat().st_mtime_ns for p in outputs]
    expected = {
        ("train", "--variant", "dpo"): ["data", "train/dpo-seed0", "train/dpo-seed1"],
        ("train-scorer",): ["data", "scorer/reward", "scorer/cost"],
        ("generate", "--variant", "reference", "--variant", "dpo-seed1"): ["data", "train/dpo-seed1",
                                                                          "generate/reference", "generate/dpo-seed1"],
        ("score", "--variant", "dpo-seed1", "--scorer", "cost"): ["data", "scorer/cost", "train/dpo-seed1",
                                                                 "generate/dpo-seed1", "score/dpo-seed1.cost"],
    }
    for (command, *extra), stages in expected.items():
        assert main(setup.args(command, root, *extra)) == 0
        assert statuses(capsys.readouterr().err) == {name: "cached" for name in stages}, command
    assert [p.stat().st_mtime_ns for p in outputs] == before


def test_single_stage_commands_first_then_run_reuses_them(setup: Setup, run_dir: Path, tmp_path: Path):
    """Stages made one command at a time are what `bdpo run` makes: same files, found cached."""
    root = tmp_path / "runs"
    steps = [
        (("train", "--variant", "dpo", "--seed", "0"), {"data": "ran", "train/dpo-seed0": "ran"}),
        (("train-scorer", "--scorer", "reward"), {"data": "cached", "scorer/reward": "ran"}),
        (("generate", "--variant", "dpo-seed0"), {"data": "cached", "train/dpo-seed0": "cached",
                                                  "generate/dpo-seed0": "ran"}),
        (("score", "--variant", "dpo-seed0", "--scorer", "reward"),
         {"data": "cached", "scorer/reward": "cached", "train/dpo-seed0": "cached", "generate/dpo-seed0": "cached",
          "score/dpo-seed0.reward": "ran"}),
    ]
    for (command, *extra), want in steps:
        assert statuses(bdpo(setup, command, root, *extra).stderr) == want, command
    later = plan(setup, root)
    assert sorted(n for n, status in later.items() if status == "cached") == sorted(
        ["data", "scorer/reward", "train/dpo-seed0", "generate/dpo-seed0", "score/dpo-seed0.reward"])
    fresh = root / setup.experiment
    for rel in ("data/train_pairs.jsonl", "scorers/reward/model.safetensors", "checkpoints/dpo-seed0/model.safetensors",
                "checkpoints/dpo-seed0/train_log.jsonl", "generations/dpo-seed0.jsonl", "scores/dpo-seed0.reward.jsonl"):
        assert (fresh / rel).read_bytes() == (run_dir / rel).read_bytes(), rel
    calibrated = [{k: json.loads((d / "scorers/reward/scorer.json").read_text())[k] for k in ("offset", "heldout")}
                  for d in (fresh, run_dir)]
    assert calibrated[0] == calibrated[1] and calibrated[0]["heldout"]["n"] > 0


def test_rerun_does_nothing_and_one_changed_variant_redoes_only_itself(setup: Setup, run_dir: Path):
    root = run_dir.parent
    assert set(plan(setup, root).values()) == {"cached"}
    changed = plan(setup, root, "variants.bdpo.params.beta=0.2")
    redo = sorted(name for name, status in changed.items() if status == "would run")
    assert redo == ["generate/bdpo-seed0", "generate/bdpo-seed1", "heldout/bdpo-seed0", "heldout/bdpo-seed1", "report",
                    "score/bdpo-seed0.cost", "score/bdpo-seed0.reward",
                    "score/bdpo-seed1.cost", "score/bdpo-seed1.reward",
                    "train/bdpo-seed0", "train/bdpo-seed1"]
    before = scores(run_dir, "dpo-seed0", "reward")
    dpo_weights = (run_dir / "checkpoints" / "dpo-seed0" / "model.safetensors").stat().st_mtime_ns
    bdpo_run(setup, root, "variants.bdpo.params.beta=0.2")
    assert scores(run_dir, "dpo-seed0", "reward") == before
    assert (run_dir / "checkpoints" / "dpo-seed0" / "model.safetensors").stat().st_mtime_ns == dpo_weights
    assert json.loads((run_dir / "manifest.json").read_text())["config"]["variants"][1]["params"]["beta"] == 0.2
