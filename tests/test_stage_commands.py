"""Single-stage commands pick stages of `bdpo run`'s plan: which stages, and the one-line refusals.

Nothing here trains or generates: plans and dry runs only (the model folder is only hashed). The
commands running real stages in both orders with `bdpo run` are in tests/test_pipeline.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main
from harness.config import load_config
from harness.errors import UserError
from harness.pipeline import Pipeline, with_upstream

CONFIG = """
experiment: picks
run_root: {root}
seeds: [0, 1]
model: {{path: {model}}}
data: {{sources: [{{format: builtin-safety, name: smoke}}], eval_prompts: 4, scorer_fraction: 0.3}}
variants:
  - {{name: dpo, loss: dpo}}
  - {{name: bdpo, loss: bdpo}}
scorers:
  - {{name: reward, path: "train:", score_type: reward}}
  - {{name: judge, type: hf-classifier, path: {model}, score_type: reward}}
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    path = tmp_path / "picks.yaml"
    path.write_text(CONFIG.format(root=tmp_path / "runs", model=model))
    return path


def names(stages) -> list[str]:
    return [s.name for s in stages]


def test_a_stage_comes_with_what_it_reads_from(config: Path) -> None:
    plan = Pipeline(load_config(str(config), [])).plan()
    assert names(with_upstream(plan, ["score/dpo-seed1.reward"])) == [
        "data", "scorer/reward", "train/dpo-seed1", "generate/dpo-seed1", "score/dpo-seed1.reward"]
    # A scorer with a model path has no stage of its own; the reference is not trained.
    assert names(with_upstream(plan, ["score/reference.judge"])) == [
        "data", "generate/reference", "score/reference.judge"]
    assert names(with_upstream(plan, ["train/bdpo-seed0", "scorer/reward"])) == [
        "data", "scorer/reward", "train/bdpo-seed0"]
    assert len(with_upstream(plan, ["report"])) == len(plan)
    with pytest.raises(UserError, match="no stage train/ipo-seed0"):
        with_upstream(plan, ["train/ipo-seed0"])


def planned(capsys: pytest.CaptureFixture, *args: str) -> dict[str, str]:
    assert main([*args, "--dry-run"]) == 0
    rows = {}
    for line in capsys.readouterr().err.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 2 and cells[1] in ("cached", "would run"):
            rows[cells[0]] = cells[1]
    return rows


def test_each_command_picks_its_stages(config: Path, capsys: pytest.CaptureFixture) -> None:
    c = str(config)
    assert list(planned(capsys, "train", c)) == ["data", "train/dpo-seed0", "train/dpo-seed1", "train/bdpo-seed0",
                                                 "train/bdpo-seed1"]
    assert list(planned(capsys, "train", c, "--variant", "bdpo", "--seed", "1")) == ["data", "train/bdpo-seed1"]
    assert list(planned(capsys, "train", c, "--variant", "dpo-seed0")) == ["data", "train/dpo-seed0"]
    assert list(planned(capsys, "train-scorer", c)) == ["data", "scorer/reward"]
    assert list(planned(capsys, "generate", c, "--variant", "reference")) == ["data", "generate/reference"]
    assert list(planned(capsys, "score", c, "--variant", "bdpo-seed0", "--scorer", "judge")) == [
        "data", "train/bdpo-seed0", "generate/bdpo-seed0", "score/bdpo-seed0.judge"]
    assert not (config.parent / "runs").exists()  # a dry run writes nothing


@pytest.mark.parametrize("args, message", [
    (["train", "--variant", "bdp"], "--variant bdp: no such variant or unit in the config. Did you mean 'bdpo'?"),
    (["train", "--variant", "reference"], "--variant reference: no such variant or unit"),
    (["train", "--seed", "7"], "--seed 7: no chosen unit has that seed; the config trains seeds [0, 1]"),
    (["train-scorer", "--scorer", "judge"], "--scorer judge: no trained scorer (path 'train:') of that name"),
    (["score", "--scorer", "cost"], "--scorer cost: no scorer of that name in the config"),
    (["score", "--out", "x.jsonl"], "--out: not used without --generations"),
    (["generate", "--out", "x.jsonl"], "--prompts and --out go together"),
    (["generate", "--limit", "2"], "--limit: not used without --prompts and --out"),
    (["train-scorer", "--max-steps", "3"], "--max-steps: not used without --data"),
])
def test_refusals_name_the_option(config: Path, capsys: pytest.CaptureFixture, args: list[str], message: str) -> None:
    assert main([args[0], str(config), *args[1:]]) == 2  # refused before any stage runs
    err = capsys.readouterr().err
    assert message in " ".join(err.split()), err


def test_file_modes_refuse_stage_options(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gens = tmp_path / "gens.jsonl"
    gens.write_text('{"prompt_id": "a", "sample_idx": 0, "prompt": "p", "response": "r"}\n')
    assert main(["score", "--generations", str(gens), "--variant", "dpo", "--scorer", "bradley-terry:x",
                 "--out", str(tmp_path / "s.jsonl")]) == 2
    assert "--variant: not used with --generations" in capsys.readouterr().err
    assert main(["score", "--generations", str(gens), "--scorer", "bradley-terry:x"]) == 2
    assert "--generations needs --out FILE and one --scorer TYPE:PATH" in capsys.readouterr().err
    assert main(["train-scorer", "--data", "builtin-safety", "--scorer", "reward", "--out", str(tmp_path)]) == 2
    assert "--scorer: not used with --data" in capsys.readouterr().err
    assert main(["train-scorer", "--data", "builtin-safety"]) == 2
    assert "--data needs --score-type" in capsys.readouterr().err
