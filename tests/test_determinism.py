"""Determinism: the same config and seed, run twice on CPU into two run directories, give byte-identical
results.json apart from its `timestamps` field, and byte-identical data splits, train logs, weights,
generations, scores and leaderboards.

The two runs are the tiny run of test_crash_resume (real HH-RLHF pairs and the 260K Llama from
../shared, or without it the built-in safety pairs and a tiny random Llama; every stage), started
from two working directories with the relative run_root `runs`, so their configs are equal.
"""

from __future__ import annotations

import pytest

from harness.io import read_json, to_json
from tests.test_crash_resume import clean_run, run_tiny, tiny_inputs

pytestmark = pytest.mark.slow

SAME_BYTES = ("data/train_pairs.jsonl", "data/scorer_pairs.jsonl", "data/eval_pairs.jsonl", "data/prompts.jsonl",
              "scorers/reward/model.safetensors",
              "checkpoints/dpo-seed0/train_log.jsonl", "checkpoints/dpo-seed0/model.safetensors",
              "checkpoints/bdpo-seed0/train_log.jsonl", "checkpoints/bdpo-seed0/model.safetensors",
              "generations/reference.jsonl", "generations/dpo-seed0.jsonl", "generations/bdpo-seed0.jsonl",
              "scores/reference.reward.jsonl", "scores/dpo-seed0.reward.jsonl", "scores/bdpo-seed0.reward.jsonl",
              "report/leaderboard.md", "report/leaderboard.csv", "report/ablations.md")


def test_same_config_and_seed_give_identical_results(tmp_path_factory: pytest.TempPathFactory):
    first = clean_run(tmp_path_factory)
    second = run_tiny(tiny_inputs(tmp_path_factory), tmp_path_factory.mktemp("again"))
    assert first != second

    texts = [(run / "results.json").read_text(encoding="utf-8") for run in (first, second)]
    results = [read_json(run / "results.json") for run in (first, second)]
    # results.json is written as to_json(results): equal canonical text of everything but the
    # timestamps means the files are byte-identical apart from that field.
    assert all(text == to_json(r) for text, r in zip(texts, results))
    assert all(set(r["timestamps"]) == {"written"} for r in results)
    rest = [to_json({k: v for k, v in r.items() if k != "timestamps"}) for r in results]
    assert rest[0] == rest[1]

    for rel in SAME_BYTES:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
