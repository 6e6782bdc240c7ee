"""This project's DPO training step against TRL's DPOTrainer (loss_type sigmoid), side by side.

    python -m bench.trl_compare [--steps 10] [--batch 2] [--max-length 64] [--threads 1]

Same model (a random Llama with SmolLM2's tokenizer), same token sequences, batch, optimizer
(Trainer's default AdamW), learning-rate schedule, precision (float32 on CPU) and beta. Each
configuration runs in its own fresh process (peak memory = that process's VmHWM):

- ours: `trainers.trainer.train_policy`, reference log-probs precomputed and cached (its only mode);
- trl: `trl.DPOTrainer` with its default resident reference model (a forward per step);
- trl-precomputed: `trl.DPOTrainer` with `precompute_ref_log_probs=True`, the like-for-like setting.
TRL's activation checkpointing (on by default in DPOConfig) is turned off: the project's trainer
does not checkpoint, so both do the same forward and backward work.

Sequences: the pairs are tokenised once by the project (`tokenize_pairs`, prompt cut to
max_length/2, response to the rest); TRL gets the decoded texts with the same max_length, so
both train on rows of max_length tokens without padding. Step time = median after the warm-up
steps of the wall and CPU time between Trainer's step callbacks (the same callback for both).
Memory: the process's peak, and the peak minus the resident set of a process that only imported
the stack (`imports_only`), i.e. what the model, optimizer, activations and data cost.
"""

from __future__ import annotations

import math
import tempfile
from typing import Any

from bench.common import long_pairs, median, report, run_isolated, step_timer, model_from_args, training_parser


def measure_trl(model: str, steps: int, batch: int, max_length: int, precompute: bool) -> dict[str, Any]:
    """Worker (fresh process): TRL's DPOTrainer on the same sequences the project trains on."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from trainers.logprobs import tokenize_pairs

    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenized, _ = tokenize_pairs(long_pairs(steps * batch), tokenizer, use_chat_template=False,
                                  max_length=max_length, max_prompt_length=max_length // 2)
    rows = [{"prompt": tokenizer.decode(p.prompt_ids), "chosen": tokenizer.decode(p.chosen_ids),
             "rejected": tokenizer.decode(p.rejected_ids)} for p in tokenized]
    timer = step_timer()
    with tempfile.TemporaryDirectory() as out:
        config = DPOConfig(
            output_dir=out, max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-5,
            lr_scheduler_type="linear", warmup_steps=math.ceil(0.1 * steps), weight_decay=0.0, max_grad_norm=1.0,
            beta=0.1, loss_type=["sigmoid"], max_length=max_length, truncation_mode="keep_start",
            precompute_ref_log_probs=precompute, logging_steps=steps, save_strategy="no", report_to=[],
            disable_tqdm=True, seed=0, data_seed=0,
            # Like for like: float32 as the project trains on CPU, and no activation checkpointing
            # (TRL's default is on: it recomputes the forward in the backward to save memory).
            bf16=False, gradient_checkpointing=False, dataloader_pin_memory=torch.cuda.is_available(),
        )
        policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        trainer = DPOTrainer(model=policy, args=config, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, callbacks=[timer])
        data = trainer.train_dataset
        lengths = [min(max_length, len(p) + len(c)) for p, c in zip(data["prompt_ids"], data["chosen_ids"])]
        trainer.train()
    return {"step_times": timer.times, "step_cpu_times": timer.cpu_times, "base_rss_mb": timer.base_rss_mb,
            "mean_tokens_per_row": sum(lengths) / len(lengths),
            "ours_mean_tokens_per_row": sum(len(p.prompt_ids) + len(p.chosen_ids) for p in tokenized) / len(tokenized)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = training_parser(__doc__.splitlines()[0], hidden=256, layers=4, steps=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)

    model = model_from_args(args)
    common = dict(threads=args.threads, model=model, steps=args.steps, batch=args.batch, max_length=args.max_length)
    runs = {
        "ours": run_isolated("bench.common:train_project", max_prompt_length=args.max_length // 2, **common),
        "trl": run_isolated("bench.trl_compare:measure_trl", precompute=False, **common),
        "trl-precomputed": run_isolated("bench.trl_compare:measure_trl", precompute=True, **common),
    }
    imports = run_isolated("bench.common:imports_only", threads=args.threads)["rss_mb"]
    step = {k: median(r["step_times"][args.warmup:]) for k, r in runs.items()}
    cpu = {k: median(r["step_cpu_times"][args.warmup:]) for k, r in runs.items()}
    peak = {k: r["peak_rss_mb"] for k, r in runs.items()}
    added = {k: r["peak_rss_mb"] - imports for k, r in runs.items()}
    results = {"model": model, "batch_pairs": args.batch, "max_length": args.max_length, "threads": args.threads,
               "steps_timed": args.steps - args.warmup,
               "mean_tokens_per_row": {"ours": runs["trl"]["ours_mean_tokens_per_row"],
                                       "trl": runs["trl"]["mean_tokens_per_row"]},
               "median_step_s": step, "median_step_cpu_s": cpu, "peak_rss_mb": peak,
               "imports_only_rss_mb": imports, "peak_minus_imports_mb": added,
               "rss_at_train_begin_mb": {k: r["base_rss_mb"] for k, r in runs.items()}}
    ratios = []
    for other in ("trl", "trl-precomputed"):
        for kind, t in (("wall", step), ("cpu", cpu)):
            ratios.append((f"step_{kind} ours/{other}", t["ours"] / t[other], "<= 1.0", t["ours"] <= t[other]))
        ratios.append((f"peak_memory ours/{other}", peak["ours"] / peak[other], "<= 1.0", peak["ours"] <= peak[other]))
        ratios.append((f"peak_minus_imports ours/{other}", added["ours"] / added[other], "<= 1.0",
                       added["ours"] <= added[other]))
    report("DPO training step: this project against TRL's DPOTrainer (sigmoid)", results, ratios, args.json)
    return {"results": results, "ratios": ratios}


if __name__ == "__main__":
    main()
