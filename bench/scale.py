"""Scale on paper: how step time and memory grow with model size, sequence length and variants.

    python -m bench.scale [--sizes 128x2,256x4,384x6] [--seqs 32,64,128] [--steps 4] [--threads 1]

Measured here (each point a fresh one-thread process running `train_policy`, float32, 2 pairs per
step), then fitted and extrapolated with these formulas:

- time per step  t = t0 + c * F * tokens, F = 6 N + 12 L H T model FLOPs per token
  (bench.gpu_throughput): t0 a fixed per-step cost, c seconds per FLOP on this machine. Linear in
  model size and in tokens; quadratic in T only once 12 L H T is comparable to 6 N.
- memory  M = M0 + b * N + a * tokens: weights, gradients and AdamW's two moments are 16 bytes per
  parameter in float32 (b = 16), plus activations and the [rows, T, vocab] logits growing with
  tokens. b and a are least-squares fits of (peak - imports-only resident set).
- variants: each variant is one training run, one after another, sharing one cached reference
  precompute, so time = precompute + V * train and peak memory does not grow with V.
The extrapolation to a 7B Llama (N = 6.74e9, L = 32, H = 4096, vocab 32k) is printed with them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import median, random_llama, report, run_isolated
from bench.gpu_throughput import flops_per_token

LLAMA_7B = {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 11008, "vocab_size": 32000,
            "num_attention_heads": 32, "num_key_value_heads": 32, "params": 6.74e9}


def point(hidden: int, layers: int, seq: int, steps: int, warmup: int, threads: int) -> dict[str, Any]:
    model = random_llama(hidden, layers, 3 * hidden, max(1, hidden // 64))
    config = json.loads((Path(model) / "config.json").read_text())
    n_params = sum(f.stat().st_size for f in Path(model).glob("*.safetensors")) / 4
    run = run_isolated("bench.common:train_project", threads=threads, model=model, steps=steps, batch=2,
                       max_length=seq, max_prompt_length=seq // 2)
    tokens = run["tokens_per_step"]
    return {"hidden": hidden, "layers": layers, "seq": seq, "params": n_params, "tokens": tokens,
            "flops_per_step": flops_per_token(config, seq) * tokens,
            "step_cpu_s": median(run["step_cpu_times"][warmup:]), "step_wall_s": median(run["step_times"][warmup:]),
            "peak_rss_mb": run["peak_rss_mb"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128x2,256x4,384x6", help="hidden x layers, comma separated")
    parser.add_argument("--seqs", default="32,64,128", help="sequence lengths at the middle size")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    seqs = [int(s) for s in args.seqs.split(",")]
    mid = sizes[len(sizes) // 2]
    base_seq = seqs[len(seqs) // 2]
    imports = run_isolated("bench.common:imports_only", threads=args.threads)["rss_mb"]
    points = [point(h, layers, base_seq, args.steps, args.warmup, args.threads) for h, layers in sizes]
    points += [point(*mid, seq, args.steps, args.warmup, args.threads) for seq in seqs if seq != base_seq]

    # Time: a fixed per-step cost (Python, data, optimizer bookkeeping) plus seconds per model FLOP.
    flops = np.array([p["flops_per_step"] for p in points], dtype=float)
    cpu = np.array([p["step_cpu_s"] for p in points])
    (t0, sec_per_flop), *_ = np.linalg.lstsq(np.stack([np.ones_like(flops), flops], 1), cpu, rcond=None)
    # Memory: peak - imports = M0 + b * params + a * tokens.
    design = np.array([[1.0, p["params"], p["tokens"]] for p in points])
    mem = np.array([(p["peak_rss_mb"] - imports) * 2**20 for p in points])
    (m0, b, a), *_ = np.linalg.lstsq(design, mem, rcond=None)
    tokens_7b = 2 * 8 * 1024  # 8 pairs of 1024 tokens
    flops_7b = flops_per_token(LLAMA_7B, 1024) * tokens_7b
    results = {
        "imports_only_rss_mb": imports, "points": points,
        "fit": {"step_fixed_cpu_s": t0, "cpu_seconds_per_gflop": sec_per_flop * 1e9,
                "marginal_gflops_per_s": 1 / sec_per_flop / 1e9,
                "max_rel_error_time_fit": float(np.max(np.abs(t0 + sec_per_flop * flops - cpu) / cpu)),
                "memory_M0_mb": m0 / 2**20, "memory_bytes_per_param": b, "memory_bytes_per_token": a},
        "extrapolated_7b": {"step_flops": flops_7b, "step_seconds_this_cpu_one_thread": t0 + sec_per_flop * flops_7b,
                            "step_seconds_h100_at_35pct_mfu": flops_7b / (0.35 * 989.4e12),
                            # fp32 or mixed precision: 16 bytes/param (weights, grads, fp32 master and
                            # AdamW moments); LoRA: the frozen bf16 weights, 2 bytes/param.
                            "state_gib_full_finetune_adamw": 16 * LLAMA_7B["params"] / 2**30,
                            "state_gib_lora_bf16": 2 * LLAMA_7B["params"] / 2**30},
    }
    ratios = [("fitted memory bytes per parameter / 16 (fp32 weights+grads+AdamW)", b / 16, "~1", None),
              ("time fit max relative error", results["fit"]["max_rel_error_time_fit"], "small", None)]
    report("Scale: step time and memory against model size and sequence length", results, ratios, args.json)
    return {"results": results, "ratios": ratios}


if __name__ == "__main__":
    main()
