"""Training throughput (tokens/s) and MFU of the project's DPO step on a random Llama-style model.

    python -m bench.gpu_throughput                       # GPU: 362M params (SmolLM2-360M's shape), seq 1024, bf16
    python -m bench.gpu_throughput --shape 1b            # GPU: 1.07B params (TinyLlama-1.1B's shape, SmolLM2's vocabulary)
    python -m bench.gpu_throughput --gradient-checkpointing
    python -m bench.gpu_throughput --tiny                # CPU correctness check at a tiny size

The step is `trainers.trainer.train_policy`'s (policy forward + backward on chosen and rejected
rows, AdamW update; reference log-probs precomputed before training and not part of the step),
timed between Trainer's step callbacks with CUDA synchronised. Every row is exactly `--seq`
tokens (no padding), so tokens/s = 2 * batch * seq / median step time.

MFU = achieved model FLOP/s / peak FLOP/s of the device, with the model FLOPs per token of
PaLM (Chowdhery et al. 2022, appendix B): 6 * N + 12 * L * H * T, where N counts the matrix
parameters the token passes through (every layer's projections plus the output head; the
embedding lookup is not a matmul), L layers, H hidden size, T sequence length. Recomputation
(gradient checkpointing) is not counted as useful work, so it lowers MFU.
Peak bf16 dense: H100/H200 SXM 989.4 TFLOP/s, A100 312 TFLOP/s (or `--peak-tflops`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.common import median, random_llama, report, run_isolated

PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}
# SmolLM2-360M's shape: 362M parameters with the 49,152-token vocabulary.
GPU_SHAPE = {"hidden": 960, "layers": 32, "intermediate": 2560, "heads": 15, "kv_heads": 5}
# --shape: the GPU models. 1b is TinyLlama-1.1B's body with SmolLM2's vocabulary: 1.07B parameters.
GPU_SHAPES = {"360m": GPU_SHAPE, "1b": {"hidden": 2048, "layers": 22, "intermediate": 5632, "heads": 32, "kv_heads": 4}}
TINY_SHAPE = {"hidden": 64, "layers": 2, "intermediate": 192, "heads": 1, "kv_heads": 1}


def flops_per_token(config: dict[str, Any], seq: int) -> float:
    """6 N + 12 L H T for a Llama config (config.json as a dict)."""
    h, layers, inter, vocab = (config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"],
                               config["vocab_size"])
    head_dim = config.get("head_dim") or h // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter  # q, o; k, v; gate, up, down
    n_matmul = layers * per_layer + vocab * h  # + output head
    return 6 * n_matmul + 12 * layers * h * seq


def peak_tflops(device_name: str | None) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if device_name and key in device_name:
            return value
    return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model, seq 64, float32: CPU correctness check")
    parser.add_argument("--shape", choices=sorted(GPU_SHAPES), default="360m", help="the model (ignored with --tiny)")
    parser.add_argument("--standin-tokenizer", action="store_true",
                        help="the stand-in tokenizer even where SmolLM2's is installed (bench.common.random_llama)")
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8, help="pairs per step (2 * batch rows)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, help="device peak (default: from the GPU's name)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds the training process may take")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    import torch

    shape, dtype = (TINY_SHAPE, "float32") if args.tiny else (GPU_SHAPES[args.shape], "bfloat16")
    seq = 64 if args.tiny and args.seq == 1024 else args.seq
    steps, warmup = (4, 1) if args.tiny else (args.steps, args.warmup)
    batch = 2 if args.tiny else args.batch
    model = random_llama(shape["hidden"], shape["layers"], shape["intermediate"], shape["heads"], shape["kv_heads"],
                         standin=args.standin_tokenizer)
    config = json.loads((Path(model) / "config.json").read_text())
    n_params = sum(f.stat().st_size for f in Path(model).glob("*.safetensors")) / 4  # saved in float32
    run = run_isolated("bench.common:train_project", timeout=args.timeout, model=model, steps=steps, batch=batch, max_length=seq,
                       max_prompt_length=seq // 2, dtype=dtype, gradient_checkpointing=args.gradient_checkpointing)
    step_s = median(run["step_times"][warmup:])
    tokens_per_s = 2 * batch * seq / step_s
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    peak = args.peak_tflops or peak_tflops(device)
    achieved = flops_per_token(config, seq) * tokens_per_s
    mfu = achieved / (peak * 1e12) if peak else None
    results = {"model": model, "params_millions": round(n_params / 1e6, 1), "device": device or "cpu",
               "dtype": dtype, "seq": seq, "batch_pairs": batch, "rows_per_step": 2 * batch,
               "gradient_checkpointing": args.gradient_checkpointing, "steps_timed": steps - warmup,
               "median_step_s": step_s, "tokens_per_s": tokens_per_s,
               "model_tflops_per_s": achieved / 1e12, "peak_tflops": peak,
               "gpu_peak_allocated_gib": run["gpu_peak_allocated_gib"], "peak_rss_mb": run["peak_rss_mb"]}
    ratios = [("tokens_per_s", tokens_per_s, "(absolute)", None)]
    ratios.append(("MFU", mfu if mfu is not None else float("nan"), ">= 0.35",
                   None if mfu is None else mfu >= 0.35))
    report("Training throughput and MFU of the project's DPO step", results, ratios, args.json)
    return {"results": results, "ratios": ratios}


if __name__ == "__main__":
    main()
