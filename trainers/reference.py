"""The reference model's log-probs: computed once, cached on disk, never resident while training.

The reference is the base model, or the base model warmed up by N DPO steps on the same pairs
(`train.reference_warmup_steps`; the paper uses 300). The warm-up is an ordinary DPO training run
(trainers/trainer.py runs it) into `warmup_dir(...)` under the cache directory, shared by every
variant trained with the same model, data, tokenisation, training settings and seed.

Cache: `<cache_dir>/ref-logps/<key>.safetensors` holds the per-pair summed log-probs of the chosen
and rejected responses, in the order of the tokenised pairs. The key hashes the reference model's
weights, the exact token ids (so a change of data, chat template, tokenizer or truncation misses
the cache) and the compute dtype. Under `accelerate launch` the main process computes and writes
it first; the other processes then read it.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file

from harness.config import TrainConfig, to_dict
from harness.models import model_hash
from harness.io import atomic_path, sha256_json
from harness.progress import progress_bar
from trainers.logprobs import TokenizedPair, collate, sequence_logps, tokenization_hash

log = logging.getLogger(__name__)

CACHE_VERSION = 1
# Files that define a model's weights and architecture (tokenizer files are covered by the token ids).


@dataclasses.dataclass(frozen=True)
class ReferenceLogps:
    """Reference log-probs per pair: chosen, rejected [N] float32, in tokenised-pair order."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    key: str
    # True when the values came from the cache (no reference forward ran).
    cache_hit: bool


def no_reference(n_pairs: int) -> ReferenceLogps:
    """The stand-in for a loss that reads no reference (SimPO): NaN log-probs [n_pairs], nothing computed.

    NaN rather than zeros: a loss that declared `uses_reference = False` and read them anyway would
    give a NaN loss, which the trainer's finite check stops at once.
    """
    nan = torch.full((n_pairs,), math.nan)
    return ReferenceLogps(nan, nan.clone(), key="none", cache_hit=False)


def warmup_dir(cache_dir: Path, base_model_hash: str, tokens_hash: str, train_cfg: TrainConfig, seed: int) -> Path:
    """Where the reference warmed up by `train_cfg.reference_warmup_steps` DPO steps lives."""
    key = sha256_json({"model": base_model_hash, "tokens": tokens_hash, "seed": seed,
                       "train": to_dict(train_cfg), "version": CACHE_VERSION})
    return cache_dir / "reference-warmup" / key[:24]


def warmup_train_config(train_cfg: TrainConfig) -> TrainConfig:
    """The warm-up run's settings: the policy's, for `reference_warmup_steps` steps, itself
    referenced to the base model."""
    return dataclasses.replace(train_cfg, max_steps=train_cfg.reference_warmup_steps, reference_warmup_steps=0)


def pair_logps(model: torch.nn.Module, pairs: Sequence[TokenizedPair], pad_token_id: int, batch_size: int,
               autocast_dtype: torch.dtype | None, progress: bool, desc: str = "reference log-probs"
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs of every pair under `model` (eval mode, no grad): chosen, rejected [N]."""
    device = next(model.parameters()).device
    chosen, rejected = [], []
    model.eval()
    batches = range(0, len(pairs), batch_size)
    with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                         enabled=autocast_dtype is not None):
        with progress_bar(progress, transient=True) as bar:
            task = bar.add_task(desc, total=len(pairs))
            for start in batches:
                batch = {k: v.to(device) for k, v in collate(pairs[start:start + batch_size], pad_token_id).items()}
                logps, _ = sequence_logps(model, **batch)
                c, r = logps.float().cpu().chunk(2)
                chosen.append(c)
                rejected.append(r)
                bar.advance(task, len(c))
    return torch.cat(chosen), torch.cat(rejected)


def reference_logps(model_dir: str | Path, pairs: Sequence[TokenizedPair], *, cache_dir: Path, pad_token_id: int,
                    batch_size: int, load_kwargs: dict[str, Any], device: torch.device,
                    autocast_dtype: torch.dtype | None, progress: bool = True) -> ReferenceLogps:
    """The reference model's log-probs of every pair, from the cache or computed (then cached).

    `load_kwargs` go to `AutoModelForCausalLM.from_pretrained` (dtype, safety settings); the model
    is loaded only on a cache miss and freed before this returns.
    """
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM

    dtype_name = str(load_kwargs.get("dtype")) + "/" + str(autocast_dtype)
    key = sha256_json({"model": model_hash(str(model_dir)), "tokens": tokenization_hash(pairs),
                       "dtype": dtype_name, "version": CACHE_VERSION})
    path = cache_dir / "ref-logps" / f"{key[:32]}.safetensors"
    hit = True
    with PartialState().main_process_first():
        if not path.exists():
            hit = False
            model = AutoModelForCausalLM.from_pretrained(model_dir, **load_kwargs).to(device)
            chosen, rejected = pair_logps(model, pairs, pad_token_id, batch_size, autocast_dtype, progress)
            del model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if PartialState().is_main_process:
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as tmp:
                    save_file({"chosen": chosen, "rejected": rejected}, str(tmp), metadata={"key": key})
    state = PartialState()
    log.info("reference log-probs of %d pairs %s (process %d of %d)", len(pairs),
             "read from the cache" if hit else "computed", state.process_index + 1, state.num_processes)
    tensors = load_file(str(path))
    if tensors["chosen"].shape[0] != len(pairs):
        raise RuntimeError(f"{path}: holds {tensors['chosen'].shape[0]} pairs, expected {len(pairs)}")
    return ReferenceLogps(tensors["chosen"], tensors["rejected"], key, hit)
