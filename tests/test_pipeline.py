"""`bdpo run` end to end on real data and a real tiny model (CPU): every stage, caching, the report's numbers.

Uses configs/ci-hh-tiny.yaml (HH-RLHF harmless-base + helpful-base from ../shared, the 260K-param
TinyStories Llama as policy and as scorer backbone), with paths pointed at ../shared.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, shared_path

pytestmark = pytest.mark.slow


def overrides(run_root: Path) -> list[str]:
    model = shared_path("models", "stories260k")
    hh = shared_path("data", "hh-rlhf")
    return [
        f"run_root={run_root}",
        f"model.path={model}",
        f"data.sources.harmless.path={hh / 'harmless-base' / 'test.jsonl.gz'}",
        f"data.sources.helpful.path={hh / 'helpful-base' / 'test.jsonl.gz'}",
        f"scorers.reward.train_backbone={model}",
        f"scorers.cost.train_backbone={model}",
    ]


def bdpo_run(run_root: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "harness.cli", "run", str(REPO / "configs" / "ci-hh-tiny.yaml"),
           *overrides(run_root), *extra, "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def plan(run_root: Path, *extra: str) -> dict[str, str]:
    out = bdpo_run(run_root, *extra, "--dry-run")
    rows = {}
    for line in out.stderr.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 2 and cells[1] in ("cached", "would run"):
            rows[cells[0]] = cells[1]
    return rows


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    bdpo_run(root)
    return root / "ci-hh-tiny"


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


def test_rerun_does_nothing_and_one_changed_variant_redoes_only_itself(run_dir: Path):
    root = run_dir.parent
    assert set(plan(root).values()) == {"cached"}
    changed = plan(root, "variants.bdpo.params.beta=0.2")
    redo = sorted(name for name, status in changed.items() if status == "would run")
    assert redo == ["generate/bdpo-seed0", "generate/bdpo-seed1", "heldout/bdpo-seed0", "heldout/bdpo-seed1", "report",
                    "score/bdpo-seed0.cost", "score/bdpo-seed0.reward",
                    "score/bdpo-seed1.cost", "score/bdpo-seed1.reward",
                    "train/bdpo-seed0", "train/bdpo-seed1"]
    before = scores(run_dir, "dpo-seed0", "reward")
    dpo_weights = (run_dir / "checkpoints" / "dpo-seed0" / "model.safetensors").stat().st_mtime_ns
    bdpo_run(root, "variants.bdpo.params.beta=0.2")
    assert scores(run_dir, "dpo-seed0", "reward") == before
    assert (run_dir / "checkpoints" / "dpo-seed0" / "model.safetensors").stat().st_mtime_ns == dpo_weights
    assert json.loads((run_dir / "manifest.json").read_text())["config"]["variants"][1]["params"]["beta"] == 0.2
