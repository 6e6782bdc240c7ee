"""Correctness smoke of the benchmark scripts (bench/) at a tiny size: their workers run the real
components and return well-formed measurements. No speed is asserted here: speed targets live in
the benchmarks themselves (BENCHMARKS.md). vLLM is not started (its start-up alone is 20-40 s);
bench.generation's vLLM path is the project's VLLMGenerator, tested in tests/test_generators.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import common
from tests.conftest import REPO


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer random Llama (hidden 64) with SmolLM2's tokenizer, in this session's cache."""
    import os

    cache = os.environ.get("BDPO_TEST_CACHE") or str(tmp_path_factory.getbasetemp().parent / "bdpo-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BDPO_CACHE", cache)
        return common.random_llama(64, 2, 128, 1)


def test_run_isolated_returns_result_and_peak_memory_and_reports_failures() -> None:
    out = common.run_isolated("bench.common:machine")
    assert out["cores"] >= 1 and out["peak_rss_mb"] > 10
    with pytest.raises(RuntimeError, match="no_such_function"):
        common.run_isolated("bench.common:no_such_function")


def test_long_pairs_fill_max_length(tiny_llama: str) -> None:
    """train_project relies on it: every row is exactly max_length tokens, no padding."""
    from transformers import AutoTokenizer

    from trainers.logprobs import tokenize_pairs

    pairs = common.long_pairs(5, join=12)
    assert len({p.id for p in pairs}) == 5
    tokenized, stats = tokenize_pairs(pairs, AutoTokenizer.from_pretrained(tiny_llama), use_chat_template=False,
                                      max_length=96, max_prompt_length=48)
    assert stats.chosen_truncated == stats.rejected_truncated == 5
    assert {len(t.prompt_ids) + len(t.chosen_ids) for t in tokenized} == {96}
    assert {len(t.prompt_ids) + len(t.rejected_ids) for t in tokenized} == {96}


def test_train_project_times_every_step_cached_and_resident(tiny_llama: str, tmp_path: Path) -> None:
    cached = common.train_project(tiny_llama, steps=2, batch=2, max_length=32, max_prompt_length=16,
                                  cache=str(tmp_path))
    assert len(cached["step_times"]) == len(cached["step_cpu_times"]) == 2
    assert all(t > 0 for t in cached["step_times"]) and cached["tokens_per_step"] == 2 * 2 * 32
    assert not cached["ref_cache_hit"] and cached["base_rss_mb"] > 0
    resident = common.train_project(tiny_llama, steps=2, batch=2, max_length=32, max_prompt_length=16,
                                    cache=str(tmp_path), resident_reference=True, loss="bdpo", params={"clip": 0.3})
    assert resident["ref_cache_hit"] and len(resident["step_times"]) == 2
    import trainers.trainer

    assert trainers.trainer.PreferenceTrainer.__name__ == "PreferenceTrainer"  # the patch was undone


def test_loss_fn_timing_is_positive_for_every_benchmarked_loss() -> None:
    from bench.loss_overhead import LOSSES, loss_fn_seconds

    for name, params in LOSSES.items():
        assert 0 < loss_fn_seconds(name, params, batch=4, repeats=5) < 1


def test_trl_worker_trains_on_the_same_sequence_lengths(tiny_llama: str) -> None:
    from bench.trl_compare import measure_trl

    out = measure_trl(tiny_llama, steps=2, batch=2, max_length=32, precompute=True)
    assert len(out["step_times"]) == 2
    assert out["mean_tokens_per_row"] == out["ours_mean_tokens_per_row"] == 32


def test_reference_precompute_second_call_hits_the_cache(tiny_llama: str, tmp_path: Path) -> None:
    from bench.reference_cost import time_precompute

    out = time_precompute(tiny_llama, n_pairs=4, batch=2, max_length=32, cache=str(tmp_path))
    assert out["first"]["cache_hit"] is False and out["second"]["cache_hit"] is True


def test_scoring_naive_and_bucketed_agree_and_bucketing_pads_less(tmp_path: Path) -> None:
    from bench.scoring import measure, minilm_classifier

    out = measure(minilm_classifier(), n=8, batch=4, repeats=1)
    assert out["max_abs_score_diff"] < 1e-4
    assert out["padded_tokens"]["bucketed"] <= out["padded_tokens"]["naive"]
    assert out["padded_tokens"]["bucketed"] >= out["real_tokens"]


def test_generation_worker_counts_tokens(tiny_llama: str) -> None:
    from bench.generation import measure

    out = measure("transformers", tiny_llama, batches=[1, 2], max_new_tokens=3, batch1_prompts=2)
    assert 0 < out["1"]["tokens"] <= 2 * 3 and 0 < out["2"]["tokens"] <= 2 * 3
    assert out["2"]["tokens_per_s"] > 0


def test_synthetic_scaling_and_slope() -> None:
    from bench.synthetic_grid import scaling, slope

    out = scaling(steps=3, seeds=[1, 2], sizes=[4, 6])
    assert set(out["seeds"]) == {"1", "2"} and all(v["cpu_s"] > 0 for v in out["grid"].values())
    assert slope({"1": {"t": 1.0}, "4": {"t": 16.0}}, "t") == pytest.approx(2.0)


def test_flops_per_token_counts_every_matmul_parameter(tiny_llama: str) -> None:
    """6 N of the MFU formula: N = the weights of every nn.Linear a token passes through."""
    import torch
    from transformers import AutoModelForCausalLM

    from bench.gpu_throughput import flops_per_token

    config = json.loads((Path(tiny_llama) / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    n_linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert flops_per_token(config, seq=0) == 6 * n_linear
    assert flops_per_token(config, seq=10) - flops_per_token(config, seq=0) == 12 * config["num_hidden_layers"] * 64 * 10


def test_paper_scale_counts_padding_units_and_references():
    from bench.gpu_throughput import flops_per_token
    from bench.paper_scale import LLAMA_7B, estimate, padded_tokens_per_pair
    from harness.config import load_config

    rows = [(3, 5), (2, 2), (7, 1), (4, 4)]
    assert padded_tokens_per_pair(rows, batch=4) == 7 * 8 / 4  # one batch, every row padded to 7
    assert padded_tokens_per_pair(rows, batch=1) == (10 + 4 + 14 + 8) / 4  # each pair padded to its longer row

    cfg = load_config(str(REPO / "configs" / "paper-hh-7b.yaml"))
    out = estimate(cfg, tokens_per_pair=100.0, mean_prompt_tokens=50.0, train_pairs=1000, model=LLAMA_7B,
                   peak_flops=1e15, mfu=0.5, decode_tokens_per_s=1000.0)
    # 4 variants x 3 seeds; a warmed-up reference per seed (300 steps of 64 pairs), none from the base.
    assert out["units"] == 12 and out["references"] == 3
    fpt = flops_per_token(LLAMA_7B, cfg.train.max_length)
    hours = out["gpu_hours"]
    assert hours["policy training"] == pytest.approx(12 * 2 * 1000 * 100 * fpt / 5e14 / 3600)
    assert hours["reference warm-up"] == pytest.approx(3 * 300 * 64 * 100 * fpt / 5e14 / 3600)
    assert hours["generation"] == pytest.approx(13 * 1000 * 256 / 1000 / 3600)


def test_paper_scale_counts_the_tokens_of_any_data_format(tmp_path: Path) -> None:
    """The PKU estimate counts the derived PKU pairs with configs/paper-pku-7b.yaml's tokenisation."""
    from bench.paper_scale import main
    from tests.conftest import shared_path

    pku = shared_path("data", "pku-saferlhf-derived", "safety_pairs_5k.json")
    out = main(["--config", str(REPO / "configs" / "paper-pku-7b.yaml"), "--data-format", "pku-saferlhf-derived",
                "--data", str(pku), "--train-pairs", "1000", "--json", str(tmp_path / "pku.json")])
    assert out["pairs_counted"] == 5135 and out["train_pairs"] == 1000
    assert out["mean_tokens_per_pair_padded"] >= out["mean_tokens_per_pair_unpadded"] > 0
    assert json.loads((tmp_path / "pku.json").read_text())["gpu_hours"] == out["gpu_hours"]


def test_throughput_generation_worker_runs_every_policy_through_one_pool(tiny_llama: str, tmp_path: Path) -> None:
    from bench.throughput import agreement, generate_units, make_units, projected_wall

    units = make_units(tiny_llama, 1, str(tmp_path))
    runs = {s: generate_units(s, tiny_llama, units, prompts=2, max_new_tokens=3, generator="transformers")
            for s in ("restart", "reload")}
    assert list(runs["reload"]["units"]) == ["reference", "unit0"]
    assert 0 < runs["reload"]["tokens"] <= 2 * 2 * 3
    assert agreement(runs["reload"], runs["restart"]) == 1.0  # the same merged weights
    assert projected_wall(runs["reload"], 22) > runs["reload"]["units"]["reference"]["ready_s"]


def test_training_throughput_workers_time_both_paths_and_count_useful_flops(tiny_llama: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from bench.throughput_training import _useful_flops, logps_bf16_vs_float32, train_epoch
    from trainers.logprobs import TokenizedPair

    runs = {fast: train_epoch(tiny_llama, fast=fast, bf16=False, steps=2, batch=2, max_length=48,
                              max_prompt_length=24, lora=True) for fast in (True, False)}
    for run in runs.values():
        assert len(run["step_times"]) == 2 and run["real_tokens"] > 0 and len(run["loss"]) == 2
        assert run["padding"]["padded_share_grouped"] <= run["padding"]["padded_share_shuffled"] + 1e-9
    # Same data, same model and pairs: the same real tokens whichever the order.
    assert runs[True]["real_tokens"] == runs[False]["real_tokens"]
    logps = logps_bf16_vs_float32(tiny_llama, batch=2, max_length=48, max_prompt_length=24)
    assert len(logps["float32"]) == len(logps["bf16"]) == 4

    # Useful FLOPs by hand: one pair, two rows of 2 tokens (prompt 1 + response 1).
    config = json.loads((Path(tiny_llama) / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    n_linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    n_head = config["vocab_size"] * config["hidden_size"]
    pair = TokenizedPair("x", (1,), (2,), (3,))
    attention = 2 * config["num_hidden_layers"] * config["hidden_size"] * (2 ** 2 + 2 ** 2)
    assert _useful_flops(config, [pair], lora=False) == 3 * (2 * (n_linear - n_head) * 4 + 2 * n_head * 2 + attention)
    assert _useful_flops(config, [pair], lora=True) == 2 * (2 * (n_linear - n_head) * 4 + 2 * n_head * 2 + attention)
