"""The positive control: a trained policy's implicit reward on held-out preference pairs.

The implicit reward of a response is `beta * (log pi(y|x) - log pi_ref(y|x))` (the quantity DPO
and its variants train). On the eval split's pairs (never trained on) a policy that learned the
preference ranks the chosen response above the rejected one more often than chance. Each pair
gives one row:

    {"pair_id", "source", "chosen_logp", "rejected_logp", "ref_chosen_logp", "ref_rejected_logp",
     "beta", "margin", "correct"}

with `margin = beta * ((chosen_logp - ref_chosen_logp) - (rejected_logp - ref_rejected_logp))` and
`correct` 1 when margin > 0, 1/2 when it is 0, else 0. The untrained reference has margin 0 on every
pair (accuracy 1/2 by this rule), so it needs no row file. The reference log-probs come from the
same cache as training's (trainers/reference.py): the reference a unit was trained against (the
base model, or its warmed-up reference) is read from the unit's train_record.json; a unit whose
loss uses no reference (SimPO) is measured against the base model it started from.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from harness.config import ModelConfig, TrainConfig
from harness.io import read_json
from harness.models import load_kwargs
from harness.records import PreferencePair
from trainers.logprobs import tokenize_pairs
from trainers.reference import pair_logps, reference_logps
from trainers.trainer import RECORD, _load_tokenizer, _local_model_dir, _pad_id, _precision


def heldout_rows(model_cfg: ModelConfig, train_cfg: TrainConfig, policy_dir: Path, pairs: list[PreferencePair],
                 beta: float, cache_dir: Path, progress: bool = True) -> list[dict[str, Any]]:
    """One row per pair of `pairs` (module docstring) for the trained policy in `policy_dir`.

    Pairs are tokenised as in training (`train_cfg.max_length`, `max_prompt_length`, the model's
    chat template), so the log-probs are those the loss would see.
    """
    model_dir = _local_model_dir(model_cfg)
    tokenizer = _load_tokenizer(model_dir, model_cfg)
    tokenized, _ = tokenize_pairs(pairs, tokenizer, use_chat_template=model_cfg.use_chat_template,
                                  max_length=train_cfg.max_length, max_prompt_length=train_cfg.max_prompt_length)
    # The precisions training used: the reference in the weights' dtype (training's cache), the
    # policy under the training autocast.
    dtype, autocast = _precision(model_cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from_pretrained = {"dtype": dtype, **load_kwargs(model_cfg.trust_remote_code, model_cfg.allow_pickle_weights)}
    # A loss without a reference (SimPO) is measured against the base model it started from.
    ref_dir = read_json(Path(policy_dir) / RECORD)["reference"]["path"] or model_dir
    ref = reference_logps(ref_dir, tokenized, cache_dir=cache_dir, pad_token_id=_pad_id(tokenizer),
                          batch_size=train_cfg.batch_size, load_kwargs=from_pretrained, device=device,
                          autocast_dtype=torch.bfloat16 if dtype == torch.bfloat16 else None, progress=progress)
    model = AutoModelForCausalLM.from_pretrained(str(policy_dir), **from_pretrained).to(device)
    chosen, rejected = pair_logps(model, tokenized, _pad_id(tokenizer), train_cfg.batch_size, autocast, progress,
                                  desc="held-out log-probs")
    del model
    gc.collect()
    rows = []
    for i, pair in enumerate(pairs):
        c, r, rc, rr = (float(t[i]) for t in (chosen, rejected, ref.chosen, ref.rejected))
        margin = beta * ((c - rc) - (r - rr))
        rows.append({"pair_id": pair.id, "source": pair.source, "chosen_logp": c, "rejected_logp": r,
                     "ref_chosen_logp": rc, "ref_rejected_logp": rr, "beta": beta, "margin": margin,
                     "correct": 1.0 if margin > 0 else 0.5 if margin == 0 else 0.0})
    return rows
