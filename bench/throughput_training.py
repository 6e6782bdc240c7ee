"""Training throughput: the LM head at response positions with length-grouped batches, against
full logits in shuffled order, in float32 and bf16 autocast; CPU MFU against the measured matmul peak.

    python -m bench.throughput_training                    # SmolLM2-135M LoRA r16, HH pairs, the study's shapes
    python -m bench.throughput_training --tiny             # a 6.7M random Llama, seconds (a check of the script)

Each configuration trains one epoch (steps x batch pairs, real HH-RLHF pairs from ../shared, else
the embedded safety set) with `trainers.trainer.train_policy` in a fresh process on the same
threads, timed between Trainer's step callbacks:
- new: `trainers.logprobs.sequence_logps` (head at response positions) and `train.group_by_length`;
- old: `full_logits_logps` ([rows, T, vocab] logits) in shuffled order, as before.
Tokens/s counts real (non-padding) tokens. The padded share is measured on the HH study's
per-unit size (96 pairs; length grouping needs several batches per mega-batch). In the same run: the dense-matmul peak (GFLOP/s of a
square matmul, float32 and bfloat16) on those threads, bf16 against float32 log-probs of one batch
and the loss curves of both precisions.

Useful FLOPs of a step (padding and recomputation excluded): m x (2 N_body x real tokens + 2 N_head
x response tokens + 2 L H sum_rows T^2) with m = 3 for full fine-tuning (forward, two backward
matmuls) and m = 2 for LoRA (forward and the activation gradient; the adapters' own FLOPs are
negligible). MFU = useful FLOP/s / measured peak.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, random_llama, report, run_isolated

HH = REPO.parent / "shared" / "data" / "hh-rlhf"


def _pairs(n: int) -> list:
    from harness.config import DataSourceConfig
    from harness.data import load_source

    if HH.exists():
        source = DataSourceConfig(format="hh-rlhf", path=str(HH), max_pairs=n,
                                  options={"subsets": ["harmless-base", "helpful-base"], "split": "test"})
    else:
        source = DataSourceConfig(format="builtin-safety", max_pairs=n)
    return load_source(source).pairs[:n]


def matmul_peak(size: int = 2048, bf16_size: int = 2048, repeats: int = 3) -> dict[str, float]:
    """Worker: GFLOP/s of a square matmul, float32 ([size]^2) and bfloat16 ([bf16_size]^2), best of `repeats`."""
    import torch

    out = {}
    for name, dtype, n in (("float32", torch.float32, size), ("bfloat16", torch.bfloat16, bf16_size)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        out[name] = 2 * n ** 3 / best / 1e9
    return out


def _useful_flops(config: dict[str, Any], pairs: list, lora: bool) -> float:
    """Useful training FLOPs of one epoch over `pairs` (module docstring)."""
    h, layers, inter = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    head_dim = config.get("head_dim") or h // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim
    n_body = layers * (2 * h * h + 2 * h * kv + 3 * h * inter)
    n_head = config["vocab_size"] * h
    rows = [(len(p.prompt_ids), len(r)) for p in pairs for r in (p.chosen_ids, p.rejected_ids)]
    real = sum(a + b for a, b in rows)
    response = sum(b for _, b in rows)
    attention = 2 * layers * h * sum((a + b) ** 2 for a, b in rows)
    return (2 if lora else 3) * (2 * n_body * real + 2 * n_head * response + attention)


def train_epoch(model: str, fast: bool, bf16: bool, steps: int, batch: int, max_length: int,
                max_prompt_length: int, lora: bool, n_pairs: int | None = None) -> dict[str, Any]:
    """Worker: `steps` steps of `batch` pairs on the first `n_pairs` pairs (default: one epoch);
    step times, tokens and useful FLOPs of the pairs trained on, train log."""
    import tempfile

    import torch
    from transformers import AutoTokenizer

    import trainers.trainer as trainer_module
    from bench.common import step_timer
    from harness.config import LoraConfig, ModelConfig, TrainConfig, VariantConfig
    from harness.io import read_json, read_jsonl
    from trainers.logprobs import full_logits_logps, pair_length, tokenize_pairs

    pairs = _pairs(n_pairs or steps * batch)
    model_dir = trainer_module._local_model_dir(ModelConfig(path=model))
    model_cfg = ModelConfig(path=model_dir, dtype="float32")
    train_cfg = TrainConfig(max_steps=steps, batch_size=batch, max_length=max_length,
                            max_prompt_length=max_prompt_length, learning_rate=5e-4 if lora else 1e-5,
                            group_by_length=fast, lora=LoraConfig(enabled=lora, r=16, alpha=32))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenized, _ = tokenize_pairs(pairs, tokenizer, use_chat_template=True, max_length=max_length,
                                  max_prompt_length=max_prompt_length)
    timer = step_timer()
    saved = trainer_module.sequence_logps, trainer_module._precision
    if not fast:
        trainer_module.sequence_logps = full_logits_logps
    if bf16:  # float32 weights under bf16 autocast, as `model.dtype: auto` on a CPU with native bf16
        trainer_module._precision = lambda cfg: (torch.float32, torch.bfloat16)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            trainer_module.train_policy(model_cfg, train_cfg, VariantConfig(name="dpo", loss="dpo"), pairs,
                                        Path(tmp) / "out", seed=0, cache_dir=Path(tmp) / "cache", progress=False,
                                        callbacks=[timer])
            record = read_json(Path(tmp) / "out" / trainer_module.RECORD)
            log = read_jsonl(Path(tmp) / "out" / trainer_module.TRAIN_LOG)
    finally:
        trainer_module.sequence_logps, trainer_module._precision = saved
    config = json.loads((Path(model_dir) / "config.json").read_text())
    if steps * batch < len(tokenized):  # part of an epoch: the pairs the (seeded, grouped) order took first
        if not fast:
            raise ValueError("a partial epoch is measured on the length-grouped path only")
        order = trainer_module._LengthGroupedSampler([pair_length(p) for p in tokenized], batch, seed=0).order()
        tokenized = [tokenized[i] for i in order[:steps * batch]]
    return {"step_times": timer.times, "train_s": sum(timer.times),
            "real_tokens": sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in tokenized),
            "useful_flops": _useful_flops(config, tokenized, lora), "padding": record["padding"],
            "loss": [r["loss"] for r in log], "logps_chosen": [r["logps/chosen"] for r in log]}


def padding_of(n: int, batch: int, model: str, max_length: int, max_prompt_length: int) -> dict[str, Any]:
    """Worker: the trainer's padding statistics (`padding_stats`) of the first `n` pairs, seed 0."""
    from transformers import AutoTokenizer

    import trainers.trainer as trainer_module
    from harness.config import ModelConfig
    from trainers.logprobs import tokenize_pairs

    tokenizer = AutoTokenizer.from_pretrained(trainer_module._local_model_dir(ModelConfig(path=model)))
    tokenized, _ = tokenize_pairs(_pairs(n), tokenizer, use_chat_template=True, max_length=max_length,
                                  max_prompt_length=max_prompt_length)
    return {"pairs": len(tokenized), **trainer_module.padding_stats(tokenized, batch, seed=0)}


def logps_bf16_vs_float32(model: str, batch: int, max_length: int, max_prompt_length: int) -> dict[str, Any]:
    """Worker: the response log-probs of one batch of pairs in float32 and under bf16 autocast."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import trainers.trainer as trainer_module
    from harness.config import ModelConfig
    from trainers.logprobs import collate, sequence_logps, tokenize_pairs

    model_dir = trainer_module._local_model_dir(ModelConfig(path=model))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenized, _ = tokenize_pairs(_pairs(batch), tokenizer, use_chat_template=True, max_length=max_length,
                                  max_prompt_length=max_prompt_length)
    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch_t = collate(tokenized, trainer_module._pad_id(tokenizer))
    out = {}
    for name, enabled in (("float32", False), ("bf16", True)):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            out[name] = sequence_logps(lm, **batch_t)[0].tolist()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a 6.7M random Llama, 2 steps (checks the script)")
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4, help="pairs per step")
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--max-prompt-length", type=int, default=96)
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA r16")
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                        help="also train under bf16 autocast (auto: where the CPU has native bf16, or on a GPU)")
    parser.add_argument("--bf16-steps", type=int, help="steps of the bf16 run (default: --steps)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--padding-pairs", type=int, default=96,
                        help="pairs the padded share is measured on (the HH study trains 96 per unit)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    import torch

    from harness.models import cpu_has_bf16

    model = random_llama(128, 2, 384, 2) if args.tiny else args.model
    steps = 2 if args.tiny else args.steps
    bf16_steps = min(steps, args.bf16_steps or steps)
    shapes = dict(model=model, batch=args.batch, max_length=args.max_length,
                  max_prompt_length=args.max_prompt_length, lora=not args.full)
    native = torch.cuda.is_available() or cpu_has_bf16()
    bf16 = args.bf16 == "on" or (args.bf16 == "auto" and native)
    size = 1024 if args.tiny else 2048
    # Emulated bf16 (no AVX512-BF16 or AMX) runs near 1 GFLOP/s: a small matmul shows it.
    peak = run_isolated("bench.throughput_training:matmul_peak", threads=args.threads, size=size,
                        bf16_size=size if native else 256)
    # The old path is timed in float32 only: the targets compare against today's float32 step. bf16
    # runs the first --bf16-steps steps of the same epoch.
    names = ("old-float32", "new-float32", *(("new-bf16",) if bf16 else ()))
    runs = {name: run_isolated("bench.throughput_training:train_epoch", threads=args.threads, timeout=3600,
                               fast=name.startswith("new"), bf16=name.endswith("bf16"),
                               steps=bf16_steps if name.endswith("bf16") else steps, n_pairs=steps * args.batch,
                               **shapes)
            for name in names}
    padding = run_isolated("bench.throughput_training:padding_of", n=args.padding_pairs, batch=args.batch,
                           model=model, max_length=args.max_length, max_prompt_length=args.max_prompt_length)

    results: dict[str, Any] = {"shapes": {**shapes, "steps": steps, "bf16_steps": bf16_steps},
                               "threads": args.threads, "native_bf16": native, "matmul_peak_gflops": peak,
                               "padding": padding}
    for name, run in runs.items():
        results[name] = {"train_s": run["train_s"], "step_times": run["step_times"],
                         "tokens_per_s": run["real_tokens"] / run["train_s"],
                         "useful_gflops": run["useful_flops"] / run["train_s"] / 1e9, "loss": run["loss"]}
    if bf16:
        logps = run_isolated("bench.throughput_training:logps_bf16_vs_float32", threads=args.threads, model=model,
                             batch=args.batch, max_length=args.max_length, max_prompt_length=args.max_prompt_length)
        diff = [abs(a - b) for a, b in zip(logps["float32"], logps["bf16"])]
        results["logps_bf16_vs_float32"] = {**logps, "max_abs_diff": max(diff), "mean_abs_diff": sum(diff) / len(diff)}
        results["loss_curve_max_abs_diff_bf16_vs_float32"] = max(
            abs(a - b) for a, b in zip(runs["new-float32"]["loss"], runs["new-bf16"]["loss"]))

    def ratio(new: str, old: str) -> float:
        """Time per real token, new / old: the step-time ratio on the same work."""
        return (runs[new]["train_s"] / runs[new]["real_tokens"]) / (runs[old]["train_s"] / runs[old]["real_tokens"])

    best = min((n for n in runs if n.startswith("new")), key=lambda k: runs[k]["train_s"] / runs[k]["real_tokens"])
    ratios = [
        ("training_tokens_per_s_new_over_old_float32",
         results["new-float32"]["tokens_per_s"] / results["old-float32"]["tokens_per_s"], "(absolute)", None),
        ("training_step_time_new_over_old_float32", ratio("new-float32", "old-float32"), "<= 0.8",
         ratio("new-float32", "old-float32") <= 0.8),
    ]
    if bf16:
        ratios.append(("training_step_time_new_bf16_over_old_float32", ratio("new-bf16", "old-float32"), "<= 0.6",
                       ratio("new-bf16", "old-float32") <= 0.6))
    ratios += [
        ("training_step_time_best_new_over_old_float32", ratio(best, "old-float32"),
         "<= 0.6 with native bf16, <= 0.8 without", ratio(best, "old-float32") <= (0.6 if native else 0.8)),
        ("padded_share_shuffled", padding["padded_share_shuffled"], "(before)", None),
        ("padded_share_grouped", padding["padded_share_grouped"], "< before",
         padding["padded_share_grouped"] < padding["padded_share_shuffled"]),
        ("cpu_mfu_float32_of_float32_peak", results["new-float32"]["useful_gflops"] / peak["float32"], "(absolute)",
         None),
        ("bf16_over_float32_matmul_peak", peak["bfloat16"] / peak["float32"], "(absolute; < 1: bf16 emulated)", None),
    ]
    if bf16:
        mfu16 = results["new-bf16"]["useful_gflops"] / peak["bfloat16"]
        ratios.append(("cpu_mfu_bf16_of_bf16_peak", mfu16, ">= 0.5", mfu16 >= 0.5))
    report("Training throughput: response-position LM head, length grouping, bf16 autocast; CPU MFU",
           results, ratios, args.json)
    return {"results": results, "ratios": ratios}


if __name__ == "__main__":
    main()
