"""The preference trainer: any registered loss on a Hugging Face causal LM, on `transformers.Trainer`.

`train_policy` reads top to bottom: tokenise, fingerprint the run, get the reference log-probs
(warming the reference up first if asked), build the model (LoRA optional), train, save the
Hugging Face checkpoint, write `train_record.json` last. Trainer supplies accelerate (DDP, FSDP,
DeepSpeed), gradient accumulation, mixed precision, checkpointing and exact resume (optimizer,
scheduler, RNG, data order); `PreferenceTrainer` only replaces the loss, adds the diagnostics and
guards against non-finite numbers.

Output directory:
    model.safetensors, config.json, tokenizer files   full fine-tuning: the policy, loadable by
                                                       transformers and vLLM
    adapter_model.safetensors, adapter_config.json     LoRA: the adapter only (peft format, a few MB);
                                                       generation merges or serves it on the base model
    merged/               LoRA with train.lora.save_merged: base + adapter as one plain folder
    train_log.jsonl       one row per logged step (harness.records.TRAIN_LOG_FIELDS, TRL's names)
    tensorboard/          the same steps as TensorBoard events (tag train/<name>)
    train_fingerprint.json  what this directory is being trained from (checked on resume)
    checkpoint-<step>/    the last Trainer checkpoint (train.save_every), for resume
    train_record.json     config, hashes, reference, final metrics, versions: written last, so its
                          presence means the run finished
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import (
    AutoModelForCausalLM, AutoTokenizer, PrinterCallback, ProgressCallback, Trainer, TrainerCallback,
    TrainingArguments, TrainerState,
)
from transformers.integrations import TensorBoardCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import TrainOutput

from harness.config import LoraConfig, ModelConfig, TrainConfig, VariantConfig, check_kwargs, to_dict
from harness.errors import UserError
from harness.io import atomic_write_json, atomic_write_jsonl, file_lock, read_json, sha256_json
from harness.models import MERGED, check_weights_safe, cpu_has_bf16, load_kwargs, model_hash, resolve_model_path
from harness.progress import progress_bar
from harness.provenance import environment, timestamp
from harness.records import TRAIN_LOG_FIELDS, PreferencePair
from harness.registries import LOSSES
from trainers.logprobs import (
    TokenizedPair, collate, pair_length, padded_share, sequence_logps, tokenization_hash, tokenize_pairs,
)
from trainers.losses import LossOutput, PairLogps, diagnostics, log_grad_ratio
from trainers.reference import ReferenceLogps, no_reference, reference_logps, warmup_dir, warmup_train_config

log = logging.getLogger(__name__)

RECORD = "train_record.json"
FINGERPRINT = "train_fingerprint.json"
TRAIN_LOG = "train_log.jsonl"
TENSORBOARD = "tensorboard"
# The loss that warms the reference up (the paper: DPO), with its default parameters.
WARMUP_VARIANT = VariantConfig(name="reference-warmup", loss="dpo")


class NonFiniteError(UserError):
    """Training produced a NaN or infinity; nothing from the bad step was written."""


# --------------------------------------------------------------------------------------------
# Data: the dataset yields indices, the collator builds the concatenated batch.
# --------------------------------------------------------------------------------------------


class _Indices(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, int]:
        return {"index": i}


class _LengthGroupedSampler(torch.utils.data.Sampler):
    """transformers' length-grouped order (`get_length_grouped_indices`: a shuffle, then each
    mega-batch of up to 50 batches sorted by length, the longest batch first), drawn from its own
    generator seeded with seed + epoch: the same order on every run and after a resume."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return get_length_grouped_indices(self.lengths, self.batch_size, generator=generator)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Any:
        return iter(self.order())


def padding_stats(pairs: Sequence[TokenizedPair], batch_size: int, seed: int) -> dict[str, float]:
    """Padded share of the first epoch's batches in a shuffled order and in the length-grouped
    order, and the share of real tokens that are response tokens (the only positions the LM head
    runs at)."""
    shuffled = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    grouped = _LengthGroupedSampler([pair_length(p) for p in pairs], batch_size, seed).order()
    response = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    real = response + sum(2 * len(p.prompt_ids) for p in pairs)
    return {"padded_share_shuffled": padded_share(pairs, shuffled, batch_size),
            "padded_share_grouped": padded_share(pairs, grouped, batch_size),
            "response_share": response / real if real else 0.0}


@dataclasses.dataclass(frozen=True)
class _Collator:
    pairs: Sequence[TokenizedPair]
    ref: ReferenceLogps
    pad_token_id: int

    def __call__(self, features: list[dict[str, int]]) -> dict[str, torch.Tensor]:
        index = torch.tensor([f["index"] for f in features], dtype=torch.long)
        batch = collate([self.pairs[i] for i in index.tolist()], self.pad_token_id)
        batch.update(index=index, ref_chosen=self.ref.chosen[index], ref_rejected=self.ref.rejected[index])
        return batch


# --------------------------------------------------------------------------------------------
# The Trainer subclass.
# --------------------------------------------------------------------------------------------


class PreferenceTrainer(Trainer):
    """`transformers.Trainer` with a registered preference loss on one concatenated forward.

    Per micro-batch: logps [2B] from one forward, split into chosen/rejected [B], the loss
    `LOSSES.get(loss)(PairLogps(...), **params)`, its mean over pairs as the training loss.
    Diagnostics of every pair since the last log are gathered across processes and logged under
    TRL's names. A non-finite loss, gradient norm or weight raises `NonFiniteError` before the
    optimizer step or the save that would keep it.
    """

    def __init__(self, *, pairs: Sequence[TokenizedPair], ref: ReferenceLogps, loss: str,
                 loss_params: dict[str, Any], grad_norm_every: int, pad_token_id: int,
                 group_by_length: bool = False, **kwargs: Any) -> None:
        super().__init__(train_dataset=_Indices(len(pairs)), data_collator=_Collator(pairs, ref, pad_token_id),
                         **kwargs)
        self.pairs = pairs
        self.group_by_length = group_by_length
        self.loss_fn = LOSSES.get(loss)
        self.loss_params = dict(loss_params)
        self.grad_norm_every = grad_norm_every
        if grad_norm_every and self.accelerator.num_processes > 1:
            raise UserError("train.grad_norm_every: the per-term gradient norms are measured on one process only; "
                            "set it to 0 for multi-process training.")
        self._interval: list[dict[str, torch.Tensor]] = []  # per-pair diagnostics since the last log
        self._step_ids: list[str] = []  # ids of the pairs in the optimizer step being computed
        self._last_step_ids: list[str] = []  # ids of the pairs in the last completed step

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        if not self.group_by_length:
            return super()._get_train_sampler(train_dataset)
        return _LengthGroupedSampler([pair_length(p) for p in self.pairs], self.args.per_device_train_batch_size,
                                     self.args.data_seed)

    def _current_step(self) -> int:
        """1-based number of the optimizer step being computed."""
        return self.state.global_step + 1

    def _fail(self, step: int, what: str, ids: Sequence[str]) -> NonFiniteError:
        shown = ", ".join(ids[:8]) + (f" and {len(ids) - 8} more" if len(ids) > 8 else "")
        last = _last_checkpoint(Path(self.args.output_dir))
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved yet (train.save_every)"
        return NonFiniteError(
            f"training stopped at step {step}: {what} (pairs {shown}). Nothing from this step was "
            f"written; {kept}. Lower train.learning_rate or train.max_grad_norm, or inspect these pairs.")

    def check_finite_weights(self, when: str) -> None:
        """NonFiniteError when any (local shard of a) parameter is NaN or infinite after the last step."""
        for p in self.model.parameters():
            if p.numel() and not torch.isfinite(p.detach()).all():
                # The optimizer step already ran (global_step counts it): name that step and its pairs.
                raise self._fail(self.state.global_step, f"non-finite weights {when}", self._last_step_ids)

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> torch.Tensor:
        ids = [self.pairs[i].id for i in inputs["index"].tolist()]
        self._step_ids.extend(ids)
        logps, n_tokens = sequence_logps(model, inputs["input_ids"], inputs["attention_mask"], inputs["response_mask"])
        chosen, rejected = logps.chunk(2)
        chosen_len, rejected_len = n_tokens.float().chunk(2)
        pair_logps = PairLogps(chosen, rejected, inputs["ref_chosen"], inputs["ref_rejected"], chosen_len, rejected_len)
        out = self.loss_fn(pair_logps, **self.loss_params)
        bad = ~torch.isfinite(out.losses)
        if bad.any():
            bad_ids = [i for i, b in zip(ids, bad.tolist()) if b]
            raise self._fail(self._current_step(), f"non-finite loss {out.losses[bad][0].item()}", bad_ids)
        loss = out.losses.mean()
        row = {"chosen_rewards": out.chosen_rewards, "rejected_rewards": out.rejected_rewards,
               "log_grad_ratio": log_grad_ratio(self.loss_fn, pair_logps, self.loss_params), "losses": out.losses.detach(),
               "logps_chosen": chosen.detach(), "logps_rejected": rejected.detach()}
        if out.lam is not None:
            row["lam"] = out.lam
        if model.training and self.grad_norm_every and self._current_step() % self.grad_norm_every == 0:
            row.update(_term_grad_norms(model, out.losses.mean(), chosen, rejected))
        self._interval.append({k: self.accelerator.gather_for_metrics(v.float()).cpu() for k, v in row.items()})
        return (loss, out) if return_outputs else loss

    def _get_grad_norm(self, model: torch.nn.Module, grad_norm: Any = None) -> Any:
        # The one place where the global gradient norm (DeepSpeed and FSDP included) is known
        # before the optimizer step: stop here so a non-finite gradient never reaches the weights.
        norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        ids, self._step_ids = self._step_ids, []
        if norm is not None and not math.isfinite(float(norm)):
            raise self._fail(self._current_step(), f"non-finite gradient norm {float(norm)}", ids)
        self._last_step_ids = ids
        return norm

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        self.check_finite_weights("after the optimizer step")
        super()._save_checkpoint(model, trial)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._interval:
            logs.update(_interval_metrics(self._interval))
            self._interval = []
        super().log(logs, start_time)


def _term_grad_norms(model: torch.nn.Module, loss: torch.Tensor, chosen: torch.Tensor,
                     rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    """Parameter-gradient norms of the chosen and the rejected term of the loss, separately.

    dL/dtheta = sum_i (dL/dlw_i) dlw_i/dtheta + (dL/dll_i) dll_i/dtheta; the two sums are the
    terms. Costs two extra backward passes (retain_graph), so it runs every grad_norm_every steps.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    d_chosen, d_rejected = torch.autograd.grad(loss, (chosen, rejected), retain_graph=True)
    norms = {}
    for name, coeff, logps in (("grad_norm_chosen", d_chosen, chosen), ("grad_norm_rejected", d_rejected, rejected)):
        grads = torch.autograd.grad((coeff.detach() * logps).sum(), params, retain_graph=True, allow_unused=True)
        norms[name] = torch.sqrt(sum(g.float().pow(2).sum() for g in grads if g is not None)).reshape(1)
    return norms


def _interval_metrics(rows: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """TRL-named means over every pair since the last log (harness.records.TRAIN_LOG_FIELDS)."""
    cat = {k: torch.cat([r[k] for r in rows if k in r]) for k in set().union(*rows)}
    out = LossOutput(losses=cat["losses"], chosen_rewards=cat["chosen_rewards"],
                     rejected_rewards=cat["rejected_rewards"], lam=cat.get("lam"))
    metrics = diagnostics(out, cat["log_grad_ratio"])
    metrics["logps/chosen"] = float(cat["logps_chosen"].mean())
    metrics["logps/rejected"] = float(cat["logps_rejected"].mean())
    for key in ("grad_norm_chosen", "grad_norm_rejected"):
        if key in cat:
            metrics[key.replace("grad_norm_", "grad_norm/")] = float(cat[key].mean())
    return metrics


def _complete(checkpoint: Path) -> bool:
    """Trainer writes trainer_state.json last in a checkpoint, not atomically: complete means it reads back."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError):
        return False


def _checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[-1])


def _last_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete Trainer checkpoint (a crash while saving one leaves it incomplete)."""
    done = [p for p in output_dir.glob("checkpoint-*") if _complete(p)]
    return max(done, key=_checkpoint_step) if done else None


# --------------------------------------------------------------------------------------------
# Callbacks: the train log file and a quiet progress bar.
# --------------------------------------------------------------------------------------------


class _TrainLogWriter(TrainerCallback):
    """Appends one row per training log to train_log.jsonl; on resume keeps only the rows up to
    the checkpoint's step, so the file reads as if the run had never stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.keep_up_to(state.global_step)

    def keep_up_to(self, step: int) -> None:
        """Drop the rows after `step` (logged after the checkpoint resumed from) and a cut last line."""
        rows = []
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # the last line of a run killed mid-write
                    break
                if row.get("step", math.inf) <= step:
                    rows.append(row)
        atomic_write_jsonl(self.path, rows)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        # Every schema field is present; those a loss has no value for (lambda for DPO) are null.
        row = {**dict.fromkeys(TRAIN_LOG_FIELDS), "step": state.global_step, **logs}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True, allow_nan=False) + "\n")


class _TensorBoard(TensorBoardCallback):
    """The Trainer's TensorBoard logging (TRL's metric names, under `train/`), written by rank 0
    into `<output_dir>/tensorboard/` instead of a timestamped `runs/` folder."""

    def __init__(self, log_dir: Path) -> None:
        super().__init__()
        self.logging_dir = str(log_dir)


class _ProgressBar(TrainerCallback):
    """The training loop's bar: the project's rich progress display, with the loss and reward
    accuracy of the last logged step shown on it instead of printed log dicts."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.task: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.bar = progress_bar(fields=("loss", "acc"), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("training", total=state.max_steps, completed=state.global_step,
                                          loss=float("nan"), acc=float("nan"))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        if self.bar is not None and logs and "loss" in logs:
            self.bar.update(self.task, loss=logs["loss"], acc=logs.get("rewards/accuracies", float("nan")))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


# --------------------------------------------------------------------------------------------
# Setup helpers.
# --------------------------------------------------------------------------------------------


def _check_distributed() -> None:
    """Refuse a launch whose sharding accelerate would silently drop: accelerate enables FSDP only
    on GPUs and other accelerators; on CPU processes it runs plain DDP over gloo, with every process
    holding the whole model."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    state = PartialState()
    if asked and state.distributed_type != DistributedType.FSDP:
        raise UserError(f"FSDP was asked for (ACCELERATE_USE_FSDP=true), but accelerate runs these processes as "
                        f"{state.distributed_type.value}: it shards with FSDP only on GPUs or other accelerators. "
                        "On CPUs launch plain DDP instead (`accelerate launch --multi_gpu --num_processes N`), or "
                        "run on GPUs.")


def _precision(model_cfg: ModelConfig) -> tuple[torch.dtype, torch.dtype | None]:
    """(weights dtype, autocast dtype or None). auto: bfloat16 weights and autocast on a GPU;
    float32 weights with bfloat16 autocast on a CPU with native bf16; float32 elsewhere."""
    if model_cfg.dtype == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16, torch.bfloat16
        return torch.float32, torch.bfloat16 if cpu_has_bf16() else None
    if model_cfg.dtype == "bfloat16":
        return torch.bfloat16, torch.bfloat16
    return torch.float32, None


def _training_args(train_cfg: TrainConfig, output_dir: Path, seed: int, dtype: torch.dtype,
                   progress: bool) -> TrainingArguments:
    """Trainer's arguments; `dtype` is the compute precision (bfloat16: bf16 autocast)."""
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=train_cfg.max_steps,
        per_device_train_batch_size=train_cfg.batch_size,
        gradient_accumulation_steps=train_cfg.grad_accum,
        learning_rate=train_cfg.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=math.ceil(train_cfg.warmup_ratio * train_cfg.max_steps),
        weight_decay=train_cfg.weight_decay,
        max_grad_norm=train_cfg.max_grad_norm,
        bf16=dtype == torch.bfloat16,
        logging_strategy="steps",
        logging_steps=train_cfg.log_every,
        # A NaN loss stops training (NonFiniteError) rather than being averaged away.
        logging_nan_inf_filter=False,
        save_strategy="steps" if train_cfg.save_every else "no",
        save_steps=train_cfg.save_every or 1,
        # The newest checkpoint is all that resume needs; optimizer states are 2x the weights.
        save_total_limit=1,
        seed=seed,
        data_seed=seed,
        remove_unused_columns=False,
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=not progress,
        report_to=[],  # TensorBoard through _TensorBoard, into a fixed folder
    )


def _local_model_dir(model_cfg: ModelConfig) -> str:
    """A local folder for the model: hashing, the reference and the policy all read the same files."""
    path = resolve_model_path(model_cfg.path)
    if Path(path).is_dir():
        return path
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", *(["*.bin"] if model_cfg.allow_pickle_weights else [])]
    try:
        return snapshot_download(path, allow_patterns=patterns)
    except Exception as e:  # offline, unknown name, no access: all the user's to fix
        raise UserError(f"model.path '{path}': not a local folder and not downloadable from the Hugging Face Hub "
                        f"({type(e).__name__}). Point model.path at a local Hugging Face folder.") from None


def _load_tokenizer(model_dir: str, model_cfg: ModelConfig) -> Any:
    return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=model_cfg.trust_remote_code)


def _pad_id(tokenizer: Any) -> int:
    # Padding positions are masked out of attention and log-probs, so any valid id serves.
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def _apply_lora(model: torch.nn.Module, train_cfg: TrainConfig) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = train_cfg.lora
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def _check_output_dir(output_dir: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The finished record when output_dir already holds this exact training; None to (re)start or resume.

    A directory holding anything else (another training, or files that are not ours) is an error:
    nothing the user has is overwritten.
    """
    fp_path, record_path = output_dir / FINGERPRINT, output_dir / RECORD
    if fp_path.exists():
        if read_json(fp_path) != fingerprint:
            raise UserError(f"{output_dir}: holds a training with other settings, data or model ({FINGERPRINT} "
                            "differs). Choose another output directory, or delete this one to retrain.")
        return read_json(record_path) if record_path.exists() else None
    # Hidden temporaries (`.name.XXXX.tmp`) are what a writer killed mid-write leaves, never a user's file.
    found = sorted(p.name for p in output_dir.iterdir()
                   if not (p.name.startswith(".") and p.name.endswith(".tmp"))) if output_dir.exists() else []
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise UserError(f"{output_dir}: not empty ({shown}) and not a training output directory. Choose an empty "
                        "or new directory; nothing in this one was changed.")
    return None


def _weights_kind(lora: LoraConfig) -> str:
    """What the output directory holds (train_record.json `weights`)."""
    if not lora.enabled:
        return "full"
    return "lora-adapter+merged" if lora.save_merged else "lora-adapter"


def _final_metrics(trainer: Trainer, train_output: Any) -> dict[str, float]:
    """The last logged row's TRL metrics, plus the run's mean loss and runtime."""
    rows = [r for r in trainer.state.log_history if "loss" in r]
    last = rows[-1] if rows else {}
    metrics = {k: last[k] for k in TRAIN_LOG_FIELDS if k in last}
    metrics.update({k: v for k, v in last.items() if k.startswith("grad_norm")})
    metrics["train_loss"] = train_output.training_loss
    metrics["train_runtime"] = train_output.metrics.get("train_runtime", 0.0)
    metrics["step"] = trainer.state.global_step
    return metrics


def _restore_finished(trainer: PreferenceTrainer, checkpoint: Path, train_log: _TrainLogWriter) -> TrainOutput:
    """The trainer as it was at `checkpoint`, a checkpoint of the last step, without training.

    Trainer checks max_steps only after a step, so resuming from the last step's checkpoint (a run
    stopped between it and the final save) would train and log one step past the end. The
    returned training loss is the mean of the logged losses, as no step runs in this call.
    """
    trainer._load_from_checkpoint(str(checkpoint))
    trainer.state = TrainerState.load_from_json(str(checkpoint / TRAINER_STATE_NAME))
    if trainer.is_world_process_zero():
        train_log.keep_up_to(trainer.state.global_step)
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return TrainOutput(trainer.state.global_step, sum(losses) / len(losses) if losses else 0.0, {})


def _save_final(trainer: PreferenceTrainer, output_dir: Path, lora: LoraConfig) -> None:
    """The policy, safetensors only: a LoRA unit as its adapter (peft format, a few MB; plus the merged
    model in merged/ when `lora.save_merged`), full fine-tuning as a plain Hugging Face folder."""
    trainer.check_finite_weights("at the end of training")
    if lora.enabled:
        trainer.accelerator.wait_for_everyone()
        if trainer.is_world_process_zero():
            model = trainer.accelerator.unwrap_model(trainer.model)
            model.save_pretrained(output_dir, safe_serialization=True)
            trainer.processing_class.save_pretrained(output_dir)
            if lora.save_merged:
                # After the adapter is written: merging folds the adapter into the base weights in place.
                model.merge_and_unload().save_pretrained(output_dir / MERGED, safe_serialization=True)
                trainer.processing_class.save_pretrained(output_dir / MERGED)
    else:
        trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        # Trainer pickles its arguments next to the weights; the record holds the config instead.
        (output_dir / "training_args.bin").unlink(missing_ok=True)
    trainer.accelerator.wait_for_everyone()


# --------------------------------------------------------------------------------------------
# The entry point.
# --------------------------------------------------------------------------------------------


def train_policy(model_cfg: ModelConfig, train_cfg: TrainConfig, variant: VariantConfig,
                 pairs: list[PreferencePair], output_dir: Path, seed: int, cache_dir: Path,
                 progress: bool = True, callbacks: Sequence[TrainerCallback] = ()) -> dict:
    """Train one policy with `variant`'s loss on `pairs`; return its final metrics.

    `train_cfg` is the train section with the variant's overrides already applied
    (harness.config.variant_train_config). output_dir receives the Hugging Face checkpoint,
    train_log.jsonl and train_record.json; rerunning on a directory with a Trainer checkpoint of
    the same training resumes it exactly, and on a finished one returns its metrics. cache_dir
    holds reference log-prob caches and warmed-up references. `callbacks` are extra
    `transformers.TrainerCallback`s (loggers, custom stopping).
    """
    _check_distributed()
    output_dir, cache_dir = Path(output_dir), Path(cache_dir)
    if not pairs:
        raise UserError(f"variant '{variant.name}': no training pairs. Check data.sources.")
    check_kwargs(LOSSES.get(variant.loss), variant.params, f"variants.{variant.name}.params")

    # Model and data, as token ids.
    model_dir = _local_model_dir(model_cfg)
    check_weights_safe(model_dir, model_cfg.allow_pickle_weights)
    tokenizer = _load_tokenizer(model_dir, model_cfg)
    tokenized, stats = tokenize_pairs(pairs, tokenizer, use_chat_template=model_cfg.use_chat_template,
                                      max_length=train_cfg.max_length, max_prompt_length=train_cfg.max_prompt_length)
    log.info("tokenisation: %s", stats.summary())
    if train_cfg.epochs is not None:
        per_step = train_cfg.batch_size * train_cfg.grad_accum * int(os.environ.get("WORLD_SIZE", "1"))
        steps = max(1, math.ceil(train_cfg.epochs * len(tokenized) / per_step))
        train_cfg = dataclasses.replace(train_cfg, max_steps=steps)
        log.info("%s epochs of %d pairs = %d optimiser steps", train_cfg.epochs, len(tokenized), steps)
    dtype, autocast = _precision(model_cfg)
    base_hash = model_hash(model_dir)
    tokens_hash = tokenization_hash(tokenized)
    fingerprint = {"model": to_dict(model_cfg), "model_hash": base_hash, "tokens": tokens_hash,
                   "train": to_dict(train_cfg), "variant": to_dict(variant), "seed": seed, "dtype": str(dtype),
                   "autocast": str(autocast)}
    padding = {"group_by_length": train_cfg.group_by_length,
               **padding_stats(tokenized, train_cfg.batch_size, seed)}
    log.info("padding: %.1f%% of batch tokens with length grouping, %.1f%% in shuffled order (%s); "
             "response tokens (the LM head's positions): %.1f%% of real tokens",
             100 * padding["padded_share_grouped"], 100 * padding["padded_share_shuffled"],
             "grouped" if train_cfg.group_by_length else "shuffled", 100 * padding["response_share"])

    # Rank 0 checks and claims the directory first; the other processes then find its fingerprint
    # (checked concurrently, they would see a folder that rank 0 is still writing).
    from accelerate import PartialState

    state = PartialState()
    with state.main_process_first():
        finished = _check_output_dir(output_dir, fingerprint)
        if finished is None and state.is_main_process:
            output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(output_dir / FINGERPRINT, fingerprint)
    if finished is not None:
        log.info("%s: already trained (%s); nothing to do", output_dir, RECORD)
        return finished["final_metrics"]

    # Reference: the base model, or the base warmed up by N DPO steps; only its log-probs are kept.
    # A loss that reads no reference (SimPO) gets none: no warm-up, no reference pass.
    uses_reference = LOSSES.get(variant.loss).uses_reference
    ref_dir = model_dir
    warm_seed = seed if train_cfg.reference_warmup_seed is None else train_cfg.reference_warmup_seed
    if uses_reference and train_cfg.reference_warmup_steps:
        warm_dir = warmup_dir(cache_dir, base_hash, tokens_hash, train_cfg, warm_seed)
        warm_cfg = warmup_train_config(train_cfg)
        if warm_cfg.lora.enabled:  # the reference is read as one plain model folder: keep the merged copy
            warm_cfg = dataclasses.replace(warm_cfg, lora=dataclasses.replace(warm_cfg.lora, save_merged=True))
        log.info("reference: base model warmed up by %d DPO steps in %s", train_cfg.reference_warmup_steps, warm_dir)
        # Shared by the units of this warm-up seed: a parallel run's other train jobs wait, then find it
        # trained. (The processes of one `accelerate launch` run enter together: they train it as one.)
        lock = file_lock(warm_dir.with_name(warm_dir.name + ".lock")) if state.num_processes == 1 else nullcontext()
        with lock:
            train_policy(model_cfg, warm_cfg, WARMUP_VARIANT, pairs, warm_dir, warm_seed, cache_dir, progress)
        ref_dir = str(warm_dir / MERGED if warm_cfg.lora.enabled else warm_dir)
    from_pretrained = {"dtype": dtype, **load_kwargs(model_cfg.trust_remote_code, model_cfg.allow_pickle_weights)}
    args = _training_args(train_cfg, output_dir, seed, autocast or dtype, progress)
    if uses_reference:
        # The reference runs in the weights' precision: float32 weights give float32 reference log-probs
        # (the same cache) whether or not the policy trains under bf16 autocast.
        ref = reference_logps(ref_dir, tokenized, cache_dir=cache_dir, pad_token_id=_pad_id(tokenizer),
                              batch_size=train_cfg.batch_size, load_kwargs=from_pretrained, device=args.device,
                              autocast_dtype=torch.bfloat16 if dtype == torch.bfloat16 else None, progress=progress)
    else:
        log.info("reference: none (loss '%s' does not use one)", variant.loss)
        ref = no_reference(len(tokenized))

    # Policy.
    torch.manual_seed(seed)  # LoRA initialisation
    model = AutoModelForCausalLM.from_pretrained(model_dir, **from_pretrained)
    if train_cfg.lora.enabled:
        model = _apply_lora(model, train_cfg)
    train_log = _TrainLogWriter(output_dir / TRAIN_LOG)
    trainer = PreferenceTrainer(
        model=model, args=args, processing_class=tokenizer, pairs=tokenized, ref=ref, loss=variant.loss,
        loss_params=variant.params, grad_norm_every=train_cfg.grad_norm_every, pad_token_id=_pad_id(tokenizer),
        group_by_length=train_cfg.group_by_length,
        callbacks=[train_log, _TensorBoard(output_dir / TENSORBOARD), *callbacks],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    bar = _ProgressBar()
    if progress:
        trainer.add_callback(bar)

    resume = _last_checkpoint(output_dir)
    if resume:
        log.info("resuming from %s", resume)
    if resume and _checkpoint_step(resume) >= args.max_steps:
        train_output = _restore_finished(trainer, resume, train_log)
    else:
        try:
            train_output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        finally:  # an error (a NaN guard, Ctrl-C) must not leave the bar drawing over the message
            bar.close()
    _save_final(trainer, output_dir, train_cfg.lora)

    metrics = _final_metrics(trainer, train_output)
    if trainer.is_world_process_zero():
        atomic_write_json(output_dir / RECORD, {
            "complete": True,
            "variant": variant.name,
            "seed": seed,
            "step": trainer.state.global_step,
            "config": {"model": to_dict(model_cfg), "train": to_dict(train_cfg), "variant": to_dict(variant)},
            "fingerprint": sha256_json(fingerprint),
            "data_hash": sha256_json([p.to_dict() for p in pairs]),
            "model_hash": base_hash,
            "tokenization": {"hash": tokens_hash, **stats.to_dict()},
            "precision": {"weights": str(dtype), "autocast": str(autocast)},
            "padding": padding,
            "reference": {"kind": ("warmup" if train_cfg.reference_warmup_steps else "base") if uses_reference else "none",
                          "path": ref_dir if uses_reference else None,
                          "warmup_steps": train_cfg.reference_warmup_steps if uses_reference else 0,
                          "warmup_seed": warm_seed if uses_reference and train_cfg.reference_warmup_steps else None,
                          "cache_key": ref.key,
                          "cache_hit": ref.cache_hit},
            "resumed_from": str(resume) if resume else None,
            "weights": _weights_kind(train_cfg.lora),
            "final_metrics": metrics,
            "environment": environment(),
            "world_size": trainer.accelerator.num_processes,
            "distributed_type": str(trainer.accelerator.distributed_type.value),
            "finished_at": timestamp(),
        })
    return metrics
