"""The preference trainer on the real tiny Llama (stories260k) and real HH-RLHF pairs.

Every run is a few steps of 8 short pairs (seq <= 64) on one CPU thread.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from harness.config import DataSourceConfig, LoraConfig, ModelConfig, TrainConfig, VariantConfig
from harness.data import load_source
from harness.errors import UserError
from harness.io import read_jsonl
from harness.models import MERGED, is_adapter, merge_adapter
from harness.registries import LOSSES
from tests.conftest import shared_path
from trainers.logprobs import collate, sequence_logps, tokenize_pairs
from trainers.reference import reference_logps
from trainers.trainer import NonFiniteError, train_policy

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_LENGTH, MAX_PROMPT = 64, 32



@pytest.fixture(scope="module")
def model_cfg() -> ModelConfig:
    return ModelConfig(path=str(shared_path("models", "stories260k")), dtype="float32")


@pytest.fixture(scope="module")
def pairs():
    """8 real HH-RLHF harmless-base test pairs, loaded by the project's own loader."""
    source = DataSourceConfig(format="hh-rlhf", path=str(shared_path("data", "hh-rlhf")), max_pairs=8,
                              options={"subsets": ["harmless-base"], "split": "test"})
    return load_source(source).pairs


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train-cache")


def train_cfg(**kw) -> TrainConfig:
    base = dict(max_steps=6, batch_size=8, learning_rate=2e-3, warmup_ratio=0.0, max_length=MAX_LENGTH,
                max_prompt_length=MAX_PROMPT)
    return TrainConfig(**{**base, **kw})


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", LOSSES.names())
def test_a_few_steps_of_each_loss_lower_it_and_raise_reward_accuracy(loss, model_cfg, pairs, cache_dir, tmp_path):
    # batch_size = all 8 pairs, so every logged row is over the whole training set (before that step's update).
    metrics = train_policy(model_cfg, train_cfg(), VariantConfig(name=loss, loss=loss), pairs, tmp_path / "out",
                           seed=0, cache_dir=cache_dir, progress=False)
    rows = read_jsonl(tmp_path / "out" / "train_log.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 7))
    first, last = rows[0], rows[-1]
    if LOSSES.get(loss).uses_reference:
        assert first["rewards/margins"] == 0.0  # policy == reference at step 1
    assert last["loss"] < first["loss"]
    assert last["rewards/accuracies"] > first["rewards/accuracies"]
    assert last["rewards/accuracies"] >= 0.75
    for field in ("rewards/chosen", "logps/chosen", "log_grad_ratio/median", "log_grad_ratio/rejected_dominates"):
        assert field in last
    assert (last["lambda/mean"] is not None) == (loss in ("bdpo", "nbdpo"))  # null for losses without lambda
    assert metrics["step"] == 6 and metrics["loss"] == last["loss"]


def test_tensorboard_events_hold_the_train_log(model_cfg, pairs, cache_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_policy(model_cfg, train_cfg(max_steps=3), VariantConfig(name="bdpo", loss="bdpo"), pairs, tmp_path / "out",
                 seed=0, cache_dir=cache_dir, progress=False)
    rows = read_jsonl(tmp_path / "out" / "train_log.jsonl")
    events = EventAccumulator(str(tmp_path / "out" / "tensorboard")).Reload()
    for name in ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "lambda/mean",
                 "log_grad_ratio/median"):
        scalars = events.Scalars(f"train/{name}")
        assert [e.step for e in scalars] == [r["step"] for r in rows], name
        assert [e.value for e in scalars] == pytest.approx([r[name] for r in rows], rel=1e-6), name


def test_lora_unit_is_saved_as_an_adapter_and_merges_to_the_trained_weights(model_cfg, pairs, cache_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(model_cfg.path)
    tokenized, _ = tokenize_pairs(pairs, tokenizer, use_chat_template=True, max_length=MAX_LENGTH,
                                  max_prompt_length=MAX_PROMPT)
    batch = collate(tokenized, tokenizer.pad_token_id)
    seen = {}

    class InMemory(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kw):
            model.eval()
            with torch.no_grad():
                seen["logps"] = sequence_logps(model, **batch)[0]

    cfg = train_cfg(max_steps=3, learning_rate=1e-2, lora=LoraConfig(enabled=True, r=4, alpha=8, save_merged=True))
    out = tmp_path / "lora"
    train_policy(model_cfg, cfg, VariantConfig(), pairs, out, seed=0, cache_dir=cache_dir, progress=False,
                 callbacks=[InMemory()])
    # The unit itself is the adapter only: LoRA weights, no copy of the base model.
    assert is_adapter(out) and not (out / "model.safetensors").exists()
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert not (out / "training_args.bin").exists()
    # merged/ (train.lora.save_merged) is a plain Llama with the trained weights...
    merged = out / MERGED
    reloaded = AutoModelForCausalLM.from_pretrained(merged).eval()
    assert type(reloaded).__name__ == "LlamaForCausalLM"
    assert not any("lora" in k for k in weights(merged))
    with torch.no_grad():
        again = sequence_logps(reloaded, **batch)[0]
        base = sequence_logps(AutoModelForCausalLM.from_pretrained(model_cfg.path).eval(), **batch)[0]
    assert torch.allclose(again, seen["logps"], rtol=1e-5, atol=1e-4)
    assert not torch.allclose(again, base, atol=1e-2)  # the adapter did change the model
    # ...and merging the saved adapter into the base later gives exactly those weights.
    remerged = weights(merge_adapter(model_cfg.path, out, tmp_path / "remerged"))
    assert remerged.keys() == weights(merged).keys()
    assert all(torch.equal(remerged[k], w) for k, w in weights(merged).items())
    record = json.loads((out / "train_record.json").read_text())
    assert record["complete"] and record["weights"] == "lora-adapter+merged" and record["step"] == 3
    assert record["tokenization"]["max_length"] == MAX_LENGTH and "torch" in record["environment"]["versions"]


def test_lora_without_save_merged_keeps_no_merged_copy(model_cfg, pairs, cache_dir, tmp_path):
    cfg = train_cfg(max_steps=1, lora=LoraConfig(enabled=True, r=4, alpha=8))
    train_policy(model_cfg, cfg, VariantConfig(), pairs, tmp_path / "lora", seed=0, cache_dir=cache_dir, progress=False)
    assert is_adapter(tmp_path / "lora") and not (tmp_path / "lora" / MERGED).exists()
    assert json.loads((tmp_path / "lora" / "train_record.json").read_text())["weights"] == "lora-adapter"


class Crash(RuntimeError):
    pass


class CrashAfterSave(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kw):
        if state.global_step == self.step:
            raise Crash(f"simulated crash after saving step {self.step}")


def test_resume_after_a_crash_gives_exactly_the_uninterrupted_weights(model_cfg, pairs, cache_dir, tmp_path):
    # batch 4 of 8 pairs: the resumed run must also continue the shuffled data order mid-epoch.
    cfg = train_cfg(max_steps=5, batch_size=4, save_every=3, warmup_ratio=0.2)
    variant = VariantConfig(name="bdpo", loss="bdpo", params={"beta": 0.2})
    train_policy(model_cfg, cfg, variant, pairs, tmp_path / "a", seed=3, cache_dir=cache_dir, progress=False)
    with pytest.raises(Crash):
        train_policy(model_cfg, cfg, variant, pairs, tmp_path / "b", seed=3, cache_dir=cache_dir, progress=False,
                     callbacks=[CrashAfterSave(3)])
    assert not (tmp_path / "b" / "train_record.json").exists()
    train_policy(model_cfg, cfg, variant, pairs, tmp_path / "b", seed=3, cache_dir=cache_dir, progress=False)

    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_a, log_b = read_jsonl(tmp_path / "a" / "train_log.jsonl"), read_jsonl(tmp_path / "b" / "train_log.jsonl")
    assert [r["step"] for r in log_b] == [1, 2, 3, 4, 5] and log_a == log_b
    record = json.loads((tmp_path / "b" / "train_record.json").read_text())
    assert record["resumed_from"].endswith("checkpoint-3")
    assert record["padding"]["group_by_length"]  # the default: the resumed order is the grouped one
    assert record["precision"] == {"weights": "torch.float32", "autocast": "None"}
    # A finished directory is not retrained; one with other settings is refused, not overwritten.
    assert train_policy(model_cfg, cfg, variant, pairs, tmp_path / "b", seed=3, cache_dir=cache_dir,
                        progress=False) == record["final_metrics"]
    with pytest.raises(UserError, match="other settings"):
        train_policy(model_cfg, cfg, variant, pairs, tmp_path / "b", seed=4, cache_dir=cache_dir, progress=False)


def test_a_run_stopped_after_its_last_checkpoint_takes_no_extra_step(model_cfg, pairs, cache_dir, tmp_path):
    # The crash test's case: a kill after the final step's checkpoint but before the final save.
    # Trainer checks max_steps only after a step, so resuming from that checkpoint took step 4 and
    # logged it (3 steps of batch 4 do not fill a whole number of epochs of 8 pairs).
    cfg = train_cfg(max_steps=3, batch_size=4, save_every=1)
    variant = VariantConfig(name="dpo", loss="dpo")
    train_policy(model_cfg, cfg, variant, pairs, tmp_path / "a", seed=1, cache_dir=cache_dir, progress=False)
    with pytest.raises(Crash):
        train_policy(model_cfg, cfg, variant, pairs, tmp_path / "b", seed=1, cache_dir=cache_dir, progress=False,
                     callbacks=[CrashAfterSave(3)])
    assert (tmp_path / "b" / "checkpoint-3").is_dir() and not (tmp_path / "b" / "train_record.json").exists()
    metrics = train_policy(model_cfg, cfg, variant, pairs, tmp_path / "b", seed=1, cache_dir=cache_dir,
                           progress=False)

    assert read_jsonl(tmp_path / "b" / "train_log.jsonl") == read_jsonl(tmp_path / "a" / "train_log.jsonl")
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metrics["step"] == 3 and not (tmp_path / "b" / "checkpoint-4").exists()
    assert json.loads((tmp_path / "b" / "train_record.json").read_text())["resumed_from"].endswith("checkpoint-3")


def test_dpo_loss_and_gradients_equal_trl_dpo_trainer(model_cfg, tmp_path):
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    from harness.data import render_prompt, render_response
    from trainers.reference import ReferenceLogps
    from trainers.trainer import PreferenceTrainer, _training_args

    tokenizer = AutoTokenizer.from_pretrained(model_cfg.path)
    source = DataSourceConfig(format="hh-rlhf", path=str(shared_path("data", "hh-rlhf")), max_pairs=64,
                              options={"subsets": ["helpful-base"], "split": "test"})
    # The 4 shortest of 64 real pairs: short sequences keep the test fast and untruncated.
    batch_pairs = sorted(load_source(source).pairs, key=lambda p: len(str(p.to_dict())))[:4]
    # A reference that differs from the policy, so the margins (and the loss) are not trivially log 2.
    reference = AutoModelForCausalLM.from_pretrained(model_cfg.path).eval()
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for p in reference.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator))

    # Ours: the trainer's own collator and compute_loss; no truncation, as TRL with max_length=None.
    tokenized, _ = tokenize_pairs(batch_pairs, tokenizer, use_chat_template=True, max_length=4096,
                                  max_prompt_length=2048)
    ours_model = AutoModelForCausalLM.from_pretrained(model_cfg.path)
    with torch.no_grad():
        ref_chosen, ref_rejected = sequence_logps(reference, **collate(tokenized, tokenizer.pad_token_id))[0].chunk(2)
    ours = PreferenceTrainer(model=ours_model, args=_training_args(train_cfg(), tmp_path / "ours", 0, torch.float32,
                                                                   False),
                             processing_class=tokenizer, pairs=tokenized,
                             ref=ReferenceLogps(ref_chosen, ref_rejected, "test", False), loss="dpo",
                             loss_params={"beta": 0.1}, grad_norm_every=0, pad_token_id=tokenizer.pad_token_id)
    ours_batch = ours.data_collator([{"index": i} for i in range(len(tokenized))])
    ours_loss = ours.compute_loss(ours_model, ours_batch)
    ours_loss.backward()

    # TRL 1.16's DPOTrainer (loss_type sigmoid) on the same texts, model weights and reference.
    rows = [{"prompt": render_prompt(p.prompt, tokenizer, True),
             "chosen": render_response(p.chosen, tokenizer, True),
             "rejected": render_response(p.rejected, tokenizer, True)} for p in batch_pairs]
    trl_model = AutoModelForCausalLM.from_pretrained(model_cfg.path)
    config = trl.DPOConfig(output_dir=str(tmp_path / "trl"), beta=0.1, loss_type=["sigmoid"], max_length=None,
                           per_device_train_batch_size=4, report_to=[], use_cpu=True,
                           bf16=False)  # TRL defaults to bf16 autocast; both sides in float32 here
    trainer = trl.DPOTrainer(model=trl_model, ref_model=reference, args=config,
                             train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer)
    trl_batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    assert torch.equal(trl_batch["input_ids"], ours_batch["input_ids"])
    assert torch.equal(trl_batch["completion_mask"], ours_batch["response_mask"])
    trl_loss = trainer.compute_loss(trl_model, trl_batch)
    trl_loss.backward()

    assert abs(ours_loss.item() - 0.6931) > 1e-3  # a real margin
    assert torch.allclose(ours_loss, trl_loss, rtol=1e-5, atol=1e-6)
    trl_grads = dict(trl_model.named_parameters())
    for name, p in ours_model.named_parameters():
        theirs = trl_grads[name].grad
        assert torch.linalg.norm(p.grad - theirs) <= 1e-5 * torch.linalg.norm(theirs), name


def test_reference_cache_is_reused_and_keyed_by_data_and_tokenisation(model_cfg, pairs, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(model_cfg.path)
    kw = dict(cache_dir=tmp_path, pad_token_id=0, batch_size=4, load_kwargs={"dtype": torch.float32},
              device=torch.device("cpu"), autocast_dtype=None, progress=False)

    def tokens(ps, max_length=MAX_LENGTH):
        return tokenize_pairs(ps, tokenizer, use_chat_template=True, max_length=max_length,
                              max_prompt_length=MAX_PROMPT)[0]

    first = reference_logps(model_cfg.path, tokens(pairs), **kw)
    second = reference_logps(model_cfg.path, tokens(pairs), **kw)
    assert not first.cache_hit and second.cache_hit and first.key == second.key
    assert torch.equal(first.chosen, second.chosen)
    other_truncation = reference_logps(model_cfg.path, tokens(pairs, max_length=48), **kw)
    # (Edited at the start: the end of a long reply is cut by max_length, so an edit there is no change.)
    edited = [dataclasses.replace(pairs[0], chosen="Really. " + pairs[0].chosen), *pairs[1:]]
    other_data = reference_logps(model_cfg.path, tokens(edited), **kw)
    assert not other_truncation.cache_hit and not other_data.cache_hit
    assert len({first.key, other_truncation.key, other_data.key}) == 3
    # Only the edited pair's value changed: the cache holds per-pair values in pair order.
    assert torch.equal(other_data.chosen[1:], first.chosen[1:]) and other_data.chosen[0] != first.chosen[0]


def test_training_reuses_the_reference_cache_and_warms_the_reference_up(model_cfg, pairs, tmp_path):
    cache = tmp_path / "cache"
    cfg = train_cfg(max_steps=1)
    train_policy(model_cfg, cfg, VariantConfig(name="dpo"), pairs, tmp_path / "dpo", 0, cache, progress=False)
    train_policy(model_cfg, cfg, VariantConfig(name="ipo", loss="ipo"), pairs, tmp_path / "ipo", 0, cache,
                 progress=False)
    first = json.loads((tmp_path / "dpo" / "train_record.json").read_text())["reference"]
    second = json.loads((tmp_path / "ipo" / "train_record.json").read_text())["reference"]
    assert (first["cache_hit"], second["cache_hit"]) == (False, True) and first["cache_key"] == second["cache_key"]

    warm = train_cfg(max_steps=1, reference_warmup_steps=2)
    train_policy(model_cfg, warm, VariantConfig(name="bdpo", loss="bdpo"), pairs, tmp_path / "warm", 0, cache,
                 progress=False)
    ref = json.loads((tmp_path / "warm" / "train_record.json").read_text())["reference"]
    assert ref["kind"] == "warmup" and ref["cache_key"] != first["cache_key"]
    warm_record = json.loads((Path(ref["path"]) / "train_record.json").read_text())
    assert warm_record["step"] == 2 and warm_record["config"]["variant"]["loss"] == "dpo"
    # At step 1 the policy (the base model) is not the warmed-up reference: the rewards are non-zero.
    assert read_jsonl(tmp_path / "warm" / "train_log.jsonl")[0]["rewards/chosen"] != 0.0


def test_a_warmup_seed_shares_one_warmed_reference_across_seeds(model_cfg, pairs, tmp_path):
    cache = tmp_path / "cache"
    shared = train_cfg(max_steps=1, reference_warmup_steps=2, reference_warmup_seed=0)
    refs = []
    for seed in (0, 1):
        train_policy(model_cfg, shared, VariantConfig(name="dpo"), pairs, tmp_path / f"s{seed}", seed, cache,
                     progress=False)
        refs.append(json.loads((tmp_path / f"s{seed}" / "train_record.json").read_text())["reference"])
    assert refs[0]["path"] == refs[1]["path"] and refs[0]["cache_key"] == refs[1]["cache_key"]
    assert refs[1]["cache_hit"] and [r["warmup_seed"] for r in refs] == [0, 0]
    assert len([p for p in (cache / "reference-warmup").iterdir() if p.is_dir()]) == 1  # beside it: its lock file
    # Without it, seed 1 warms up its own reference.
    own = train_cfg(max_steps=1, reference_warmup_steps=2)
    train_policy(model_cfg, own, VariantConfig(name="dpo"), pairs, tmp_path / "own1", 1, cache, progress=False)
    ref = json.loads((tmp_path / "own1" / "train_record.json").read_text())["reference"]
    assert ref["warmup_seed"] == 1 and ref["path"] != refs[0]["path"]


def test_a_loss_without_reference_skips_the_reference_pass(model_cfg, pairs, tmp_path):
    cache = tmp_path / "cache"
    cfg = train_cfg(max_steps=2, reference_warmup_steps=2)  # no warm-up either: there is no reference
    train_policy(model_cfg, cfg, VariantConfig(name="simpo", loss="simpo"), pairs, tmp_path / "simpo", 0, cache,
                 progress=False)
    record = json.loads((tmp_path / "simpo" / "train_record.json").read_text())
    assert record["reference"]["kind"] == "none" and record["reference"]["path"] is None
    assert not (cache / "ref-logps").exists() and not (cache / "reference-warmup").exists()
    rows = read_jsonl(tmp_path / "simpo" / "train_log.jsonl")
    assert all(math.isfinite(r["loss"]) for r in rows)


class Poison(TrainerCallback):
    """Makes a weight NaN at a chosen moment, as a diverged update would."""

    def __init__(self, event: str, step: int) -> None:
        self.event, self.step = event, step

    def _poison(self, state, model):
        if state.global_step == self.step:
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("nan")

    def on_step_begin(self, args, state, control, model=None, **kw):
        if self.event == "step_begin":
            self._poison(state, model)

    def on_step_end(self, args, state, control, model=None, **kw):
        if self.event == "step_end":
            self._poison(state, model)


def _finite(folder: Path) -> bool:
    return all(torch.isfinite(t).all() for t in weights(folder).values())


def test_non_finite_loss_stops_naming_step_and_pairs_and_keeps_the_last_good_checkpoint(model_cfg, pairs, cache_dir,
                                                                                       tmp_path):
    out = tmp_path / "out"
    cfg = train_cfg(max_steps=4, batch_size=4, save_every=2)
    with pytest.raises(NonFiniteError) as err:
        train_policy(model_cfg, cfg, VariantConfig(), pairs, out, 0, cache_dir, progress=False,
                     callbacks=[Poison("step_begin", 2)])
    message = str(err.value)
    assert "step 3: non-finite loss" in message and "checkpoint-2" in message
    named = [p.id for p in pairs if p.id in message]
    assert len(named) == 4  # the whole batch of step 3 (every loss is NaN)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"] and _finite(out / "checkpoint-2")
    assert not (out / "model.safetensors").exists() and not (out / "train_record.json").exists()
    assert [r["step"] for r in read_jsonl(out / "train_log.jsonl")] == [1, 2]


def test_non_finite_weights_are_never_saved(model_cfg, pairs, cache_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(NonFiniteError, match="step 2: non-finite weights after the optimizer step"):
        train_policy(model_cfg, train_cfg(max_steps=4, batch_size=4, save_every=2), VariantConfig(), pairs, out, 0,
                     cache_dir, progress=False, callbacks=[Poison("step_end", 2)])
    assert not list(out.glob("checkpoint-*")) and not (out / "model.safetensors").exists()


def test_non_finite_gradient_stops_before_the_optimizer_step(model_cfg, pairs, cache_dir, tmp_path):
    class NanGrad(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            next(model.parameters()).register_hook(lambda g: g * float("nan"))

    with pytest.raises(NonFiniteError, match="step 1: non-finite gradient norm") as err:
        train_policy(model_cfg, train_cfg(), VariantConfig(), pairs, tmp_path / "out", 0, cache_dir,
                     progress=False, callbacks=[NanGrad()])
    assert all(p.id in str(err.value) for p in pairs)


def test_bf16_and_per_term_gradient_norms(model_cfg, pairs, cache_dir, tmp_path):
    bf16 = ModelConfig(path=model_cfg.path, dtype="bfloat16")
    metrics = train_policy(bf16, train_cfg(max_steps=2, grad_norm_every=2), VariantConfig(name="bdpo", loss="bdpo"),
                           pairs, tmp_path / "out", 0, cache_dir, progress=False)
    assert metrics["grad_norm/chosen"] > 0 and metrics["grad_norm/rejected"] > 0
    assert "grad_norm/chosen" not in read_jsonl(tmp_path / "out" / "train_log.jsonl")[0]  # measured every 2 steps
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").dtype == torch.bfloat16


def test_cli_trains_each_variant_and_prints_a_summary(model_cfg, tmp_path, capsys):
    from harness.cli import main

    config = tmp_path / "run.yaml"
    config.write_text(f"""
experiment: cli
run_root: {tmp_path / 'runs'}
seeds: [0, 1]
model: {{path: "{model_cfg.path}", dtype: float32}}
data:
  sources: [{{format: hh-rlhf, path: "{shared_path('data', 'hh-rlhf')}", max_pairs: 10,
             options: {{subsets: [harmless-base], split: test}}}}]
  eval_prompts: 2
train: {{max_steps: 2, batch_size: 4, max_length: {MAX_LENGTH}, max_prompt_length: {MAX_PROMPT}}}
variants:
  - {{name: dpo, loss: dpo, params: {{beta: 0.1}}}}
  - {{name: bdpo, loss: bdpo, params: {{beta: 0.1, clip: 0.3}}}}
""")
    assert main(["train", str(config), "train.learning_rate=1e-3", "--seed", "1", "--no-progress"]) == 0
    printed = capsys.readouterr()
    assert "dpo-seed1" in printed.out and "bdpo-seed1" in printed.out and "reward accuracy" in printed.out
    assert "'train_pairs': 8" in printed.err and "tokenisation:" in printed.err
    out = tmp_path / "runs" / "cli" / "checkpoints"
    assert sorted(p.name for p in out.iterdir()) == ["bdpo-seed1", "dpo-seed1"]
    for unit in ("dpo-seed1", "bdpo-seed1"):
        record = json.loads((out / unit / "train_record.json").read_text())
        assert record["step"] == 2 and record["config"]["train"]["learning_rate"] == 1e-3
    assert main(["train", str(config), "--variant", "bdp"]) == 2
    assert "Did you mean 'bdpo'" in capsys.readouterr().err


def test_length_grouped_order_is_a_seeded_permutation_with_less_padding(model_cfg):
    from trainers.logprobs import pair_length, padded_share
    from trainers.trainer import _LengthGroupedSampler, padding_stats

    tokenizer = AutoTokenizer.from_pretrained(model_cfg.path)
    source = DataSourceConfig(format="hh-rlhf", path=str(shared_path("data", "hh-rlhf")), max_pairs=64,
                              options={"subsets": ["helpful-base"], "split": "test"})
    tokenized, _ = tokenize_pairs(load_source(source).pairs, tokenizer, use_chat_template=True, max_length=256,
                                  max_prompt_length=128)
    sampler = _LengthGroupedSampler([pair_length(p) for p in tokenized], 4, seed=5)
    first = list(sampler)
    assert sorted(first) == list(range(len(tokenized))) and list(sampler) == first  # same order when re-read
    sampler.set_epoch(1)
    assert list(sampler) != first  # a new shuffle each epoch
    stats = padding_stats(tokenized, 4, seed=5)
    assert stats["padded_share_grouped"] == padded_share(tokenized, first, 4)
    # 64 pairs in batches of 4: mega-batches of 16 pairs (transformers: at least 4 mega-batches).
    assert stats["padded_share_grouped"] < 0.8 * stats["padded_share_shuffled"]
    assert 0 < stats["response_share"] < 1
