"""Bad input matrix: every case is one `bdpo` command on a real file or config, and must end with one
`error:` line naming the file and line (or the config key, or the field) and saying what to do, exit
code 2, and no artifact: no stage record, no data split, no score file, no new report.

Cases: data files (truncated gzip, invalid JSON on line N, missing and misspelled fields, wrong types,
empty prompt or response, chosen == rejected everywhere, non-UTF-8 bytes, a 10 MB single line, ...),
configs (unknown loss, negative beta, clip outside its range, unknown scorer, missing model path,
conflicting options, ...), scorer outputs (a real classifier giving NaN, inf, or two outputs per
row) and score files (NaN, a string, a missing row). docs/errors.md lists them with their messages.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from harness.cli import main
from tests.conftest import shared_path
from tests.test_crash_resume import EXPERIMENT, clean_run, tiny_inputs

GOOD = [{"prompt": f"How do I bake bread number {i}?", "chosen": f"Mix flour, water and yeast ({i}).",
         "rejected": "No."} for i in range(12)]


def jsonl(rows: list) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def with_row(line: int, row: object) -> bytes:
    """The good rows with line `line` (1-based) replaced by `row` (bytes are written as they are)."""
    lines = [json.dumps(r).encode() for r in GOOD]
    lines[line - 1] = row if isinstance(row, bytes) else json.dumps(row).encode()
    return b"\n".join(lines) + b"\n"


def hh_rows(n: int) -> bytes:
    return jsonl([{"chosen": f"\n\nHuman: question {i}?\n\nAssistant: a good answer {i}",
                   "rejected": f"\n\nHuman: question {i}?\n\nAssistant: a bad answer {i}"} for i in range(n)])


def truncated_gzip() -> bytes:
    data = gzip.compress(hh_rows(3000))
    return data[:len(data) // 2]


def huge_line() -> bytes:
    """One 10 MB line: a row whose prompt is a list holding a 10 MB string instead of messages."""
    return json.dumps({"prompt": ["x" * 10_000_000], "chosen": "a", "rejected": "b"}).encode() + b"\n"


# id: (file name, file bytes, source format, fragments the error line must contain)
DATA_CASES = {
    "truncated-gzip": ("hh.jsonl.gz", truncated_gzip(), "hh-rlhf",
                       ["hh.jsonl.gz:", "cannot read", "truncated; re-download it"]),
    "invalid-json-line-3": ("pairs.jsonl", with_row(3, b'{"prompt": "a", "chosen": '), "preference",
                            ["pairs.jsonl:3:", "invalid JSON", "Fix or remove that line"]),
    "missing-field": ("pairs.jsonl", with_row(2, {"prompt": "a", "chosen": "b"}), "preference",
                      ["pairs.jsonl:2:", "missing field 'rejected'", "Expected fields: prompt, chosen, rejected"]),
    "misspelled-field": ("pairs.jsonl", with_row(4, {"prompt": "a", "choosen": "b", "rejected": "c"}), "preference",
                         ["pairs.jsonl:4:", "missing field 'chosen'", "Did you mean 'choosen'?"]),
    "wrong-type": ("pairs.jsonl", with_row(2, {"prompt": "a", "chosen": 42, "rejected": "c"}), "preference",
                   ["pairs.jsonl:2:", "field 'chosen' must be a string or a list of messages, got int", "Fix that row"]),
    "empty-prompt": ("pairs.jsonl", with_row(5, {"prompt": "  ", "chosen": "b", "rejected": "c"}), "preference",
                     ["pairs.jsonl:5:", "field 'prompt' is empty", "Remove that row or fill it in"]),
    "empty-response": ("pairs.jsonl", with_row(2, {"prompt": "a", "chosen": "b", "rejected": ""}), "preference",
                       ["pairs.jsonl:2:", "field 'rejected' is empty", "Remove that row or fill it in"]),
    "chosen-equals-rejected-everywhere": (
        "pairs.jsonl", jsonl([{**r, "rejected": r["chosen"]} for r in GOOD]), "preference",
        ["data source 'preference'", "no pairs left", "12 chosen == rejected", "Check the file and the format"]),
    "non-utf8": ("pairs.jsonl", with_row(2, b'{"prompt": "caf\xe9", "chosen": "b", "rejected": "c"}'), "preference",
                 ["pairs.jsonl:2:", "not valid UTF-8", "Re-encode the file as UTF-8"]),
    "10mb-single-line": ("pairs.jsonl", huge_line(), "preference",
                         ["pairs.jsonl:1:", "field 'prompt[0]' must be an object with 'role' and 'content'"]),
    "10mb-line-cut-short": ("pairs.jsonl", huge_line()[:-3], "preference",
                            ["pairs.jsonl:1:", "invalid JSON", "Fix or remove that line"]),
    "line-not-an-object": ("pairs.jsonl", with_row(2, [1, 2]), "preference",
                           ["pairs.jsonl:2:", "expected a JSON object, got list"]),
    "nan-value": ("pairs.jsonl", with_row(3, b'{"prompt": "a", "chosen": "b", "rejected": "c", "weight": NaN}'),
                  "preference", ["pairs.jsonl:3:", "field 'weight'", "Replace it with a finite number"]),
    "prompt-ends-with-assistant": (
        "pairs.jsonl", with_row(2, {"prompt": [{"role": "user", "content": "hi"},
                                               {"role": "assistant", "content": "yo"}],
                                    "chosen": "b", "rejected": "c"}), "preference",
        ["pairs.jsonl:2:", "field 'prompt' must end with a non-empty user message"]),
    "misspelled-role": ("pairs.jsonl", with_row(2, {"prompt": [{"role": "usr", "content": "hi"}], "chosen": "b",
                                                    "rejected": "c"}), "preference",
                        ["pairs.jsonl:2:", "field 'prompt[0].role' is 'usr'", "Did you mean 'user'?"]),
    "hh-without-assistant-turn": ("hh.jsonl", jsonl([{"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi"}]),
                                  "hh-rlhf", ["hh.jsonl:1:", "field 'chosen' has no", "Use format 'preference'"]),
    "derived-response-not-a-pair": ("pairs.json", json.dumps([{"prompt": "a", "response": ["only one"]}]).encode(),
                                    "pku-saferlhf-derived",
                                    ["pairs.json: row 0:", "field 'response' must be a list [safer, less_safe]"]),
    "json-not-a-list": ("pairs.json", b'{"prompt": "a"}', "preference",
                        ["pairs.json:", "expected a JSON list of objects, got dict", "Use one object per row"]),
    "unsupported-file-type": ("pairs.csv", b"prompt,chosen,rejected\n", "preference",
                              ["pairs.csv:", "unsupported file type", "Use .json, .jsonl"]),
}


def base_config(folder: Path, source: dict) -> Path:
    """A complete config whose only data source is `source`: the data stage is the first to run."""
    model = shared_path("models", "stories260k")
    config = {"experiment": "bad", "run_root": str(folder / "runs"), "model": {"path": str(model)},
              "data": {"sources": [source], "eval_prompts": 2, "scorer_fraction": 0.3},
              "train": {"max_steps": 2, "batch_size": 2, "max_length": 64, "max_prompt_length": 32},
              "variants": [{"name": "dpo", "loss": "dpo"}, {"name": "bdpo", "loss": "bdpo", "params": {"clip": 0.3}}],
              "generate": {"generator": "transformers", "max_new_tokens": 4},
              "scorers": [{"name": "reward", "type": "bradley-terry", "path": "train:", "train_steps": 2,
                           "train_backbone": str(model)}],
              "report": {"baseline": "dpo", "bootstrap_samples": 100}}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def one_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run `bdpo argv`; the single `error:` line it printed. Exit code 2 is the CLI's answer to a
    UserError (any other exception would propagate out of main() and fail the test)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def assert_no_artifact(run_dir: Path) -> None:
    """Nothing a later run or a reader could take for output: no stage record, split, score or report."""
    assert not list(run_dir.glob("stages/**/*.json"))
    for rel in ("data", "checkpoints", "generations", "scores", "report", "results.json"):
        assert not (run_dir / rel).exists(), rel


@pytest.mark.parametrize("case", DATA_CASES, ids=list(DATA_CASES))
def test_bad_data_file(case: str, tmp_path: Path, capsys: pytest.CaptureFixture):
    name, content, fmt, fragments = DATA_CASES[case]
    (tmp_path / name).write_bytes(content)
    config = base_config(tmp_path, {"format": fmt, "path": str(tmp_path / name)})
    line = one_error(capsys, ["run", str(config), "--no-progress"])
    for fragment in fragments:
        assert fragment in line, line
    assert len(line) < 400, "the message must not echo the data"
    assert_no_artifact(tmp_path / "runs" / "bad")


def test_missing_data_file(tmp_path: Path, capsys: pytest.CaptureFixture):
    config = base_config(tmp_path, {"format": "preference", "path": str(tmp_path / "nope.jsonl")})
    line = one_error(capsys, ["run", str(config), "--no-progress"])
    assert f"{tmp_path / 'nope.jsonl'}: file not found. Check the path in your config" in line
    assert_no_artifact(tmp_path / "runs" / "bad")


# Config cases: (overrides, fragments). Config errors stop before anything is written at all.
CONFIG_CASES = {
    "unknown-loss": (["variants.dpo.loss=dpoo"], ["config key 'variants.dpo.loss'", "Did you mean 'dpo'?"]),
    "negative-beta": (["variants.dpo.params.beta=-0.1"], ["variants.dpo.params.beta", "must be > 0"]),
    "clip-outside-range": (["variants.bdpo.params.clip=0.7"], ["variants.bdpo.params.clip", "must be in [0, 0.5]"]),
    "unknown-loss-parameter": (["variants.dpo.params.clip=0.2"],
                               ["config key 'variants.dpo.params.clip'", "unknown parameter", "Valid: beta"]),
    "unknown-scorer": (["scorers.reward.type=bradly-terry"],
                       ["config key 'scorers.reward.type'", "Did you mean 'bradley-terry'?"]),
    "missing-model-path": (["model.path=./no-such-model"],
                           ["model path './no-such-model' does not exist", "Point model.path at"]),
    "prompt-longer-than-sequence": (["train.max_prompt_length=128"],
                                    ["config key 'train.max_prompt_length", "must be smaller than max_length"]),
    "baseline-not-a-variant": (["report.baseline=ipo"], ["config key 'report.baseline'", "'ipo' is not a variant"]),
    "duplicate-variants": (["variants.bdpo.name=dpo"], ["config key 'variants': duplicate variant names ['dpo']"]),
    "misspelled-key": (["train.learnin_rate=1e-4"],
                       ["config key 'train.learnin_rate'", "Did you mean 'learning_rate'?"]),
    "wrong-type": (["train.max_steps=many"], ["config key 'train.max_steps'", "expected int, got 'many'"]),
    "fraction-out-of-range": (["data.scorer_fraction=1.5"], ["data.scorer_fraction': must be in [0, 1)"]),
    "unknown-data-format": (["data.sources.0.format=jsonl"], ["config key 'data.sources.0.format'"]),
    "infinite-learning-rate": (["train.learning_rate=.inf"], ["config key 'train.learning_rate'", "finite number"]),
}


@pytest.mark.parametrize("case", CONFIG_CASES, ids=list(CONFIG_CASES))
def test_bad_config(case: str, tmp_path: Path, capsys: pytest.CaptureFixture):
    overrides, fragments = CONFIG_CASES[case]
    (tmp_path / "pairs.jsonl").write_bytes(jsonl(GOOD))
    config = base_config(tmp_path, {"format": "preference", "path": str(tmp_path / "pairs.jsonl")})
    line = one_error(capsys, ["run", str(config), *overrides, "--no-progress"])
    for fragment in fragments:
        assert fragment in line, line
    assert not (tmp_path / "runs").exists()


def test_invalid_yaml_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture):
    config = tmp_path / "config.yaml"
    config.write_text("experiment: x\ntrain:\n  max_steps: [1\n", encoding="utf-8")
    line = one_error(capsys, ["run", str(config), f"run_root={tmp_path / 'runs'}", "--no-progress"])
    assert f"{config}:" in line and "invalid YAML" in line
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------------------------
# Scorer outputs: a real classifier on the 260K backbone whose output is broken, scoring the
# generations of a real (tiny) run; and score files broken after the fact.
# --------------------------------------------------------------------------------------------


def broken_classifier(folder: Path, kind: str) -> Path:
    """The 260K Llama as a sequence classifier that outputs NaN, inf, or two numbers per input."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    backbone = shared_path("models", "stories260k")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=2 if kind == "two-outputs" else 1)
    with torch.no_grad():
        if kind == "nan":
            model.score.weight.fill_(float("nan"))
        elif kind == "inf":  # finite weights whose product overflows float32: score = 3e38 * (3e38 * x_0)
            model.score.weight.zero_()
            model.score.weight[0, 0] = 3e38
            model.model.norm.weight[0] = 3e38
    model.config.pad_token_id = 0
    out = folder / f"scorer-{kind}"
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(backbone).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The finished tiny run of test_crash_resume (made once per session)."""
    return clean_run(tmp_path_factory)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_inputs(tmp_path_factory)


def copy_without_scores(run_dir: Path, to: Path) -> Path:
    """A copy of a finished run with its score files, score and report records and report removed."""
    copy = to / "runs" / EXPERIMENT
    shutil.copytree(run_dir, copy)
    for rel in ("scores", "report", "stages/score"):
        shutil.rmtree(copy / rel)
    (copy / "results.json").unlink()
    (copy / "stages" / "report.json").unlink()
    return copy


@pytest.mark.parametrize("kind,fragments", [
    ("nan", ["generations/reference.jsonl:", "non-finite score nan", "check the model's weights and dtype",
             "(prompt_id 'hh:"]),
    ("inf", ["generations/reference.jsonl:", "non-finite score", "inf;", "(prompt_id 'hh:"]),
    ("two-outputs", ["has 2 outputs (num_labels)", "a reward or cost model has exactly one"]),
])
def test_broken_scorer_output(kind, fragments, scored_run, tiny_config, tmp_path, capsys):
    copy = copy_without_scores(scored_run, tmp_path)
    scorer = broken_classifier(tmp_path, kind)
    line = one_error(capsys, ["run", str(tiny_config), f"run_root={tmp_path / 'runs'}",
                              "scorers.reward.type=hf-classifier", f"scorers.reward.path={scorer}", "--no-progress"])
    for fragment in fragments:
        assert fragment in line, line
    # Training and generation were cached; no score file, score record or report was written.
    assert not (copy / "scores").exists() and not list((copy / "stages").glob("score/*.json"))
    assert not (copy / "results.json").exists() and not (copy / "report").exists()


@pytest.mark.parametrize("row,fragments", [
    ('{"prompt_id": "%s", "sample_idx": 0, "score": NaN}', ["field 'score'", "Replace it with a finite number"]),
    ('{"prompt_id": "%s", "sample_idx": 0, "score": "high"}', ["field 'score': expected a finite number, got 'high'"]),
    (None, ["no row for prompt_id", "Rerun the stage that writes it"]),
])
def test_broken_score_file_keeps_the_old_report(row, fragments, scored_run, tmp_path, capsys):
    copy = tmp_path / EXPERIMENT
    shutil.copytree(scored_run, copy)
    before = {rel: (copy / rel).read_bytes() for rel in ("results.json", "report/index.html", "report/leaderboard.md")}
    scores = copy / "scores" / "dpo-seed0.reward.jsonl"
    lines = scores.read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[1])
    lines[1:2] = [] if row is None else [row % first["prompt_id"]]
    scores.write_text("\n".join(lines) + "\n", encoding="utf-8")
    line = one_error(capsys, ["report", str(copy)])
    assert "scores/dpo-seed0.reward.jsonl" in line
    if row is not None:
        assert "dpo-seed0.reward.jsonl:2:" in line
    for fragment in fragments:
        assert fragment in line, line
    assert {rel: (copy / rel).read_bytes() for rel in before} == before
    assert sorted(p.name for p in copy.iterdir() if p.name.startswith(".report")) == []
