"""Reference cost: peak memory of training with precomputed, cached reference log-probs against
training with a resident reference model of the policy's size; the precompute's time; cache reuse.

    python -m bench.reference_cost [--hidden 512] [--layers 8] [--steps 3] [--threads 1]

Each training runs in its own fresh process (peak = VmHWM), all with `train_policy`:
- cached: the project's way. The reference log-probs come from the cache (already filled), so
  no reference model is ever loaded during training.
- resident: the same trainer, loss, data and settings, but a second copy of the model stays
  loaded and runs a no-grad forward every step for the reference log-probs (what trainers
  without a cache, TRL's default among them, do).
Both for full fine-tuning and for LoRA. The precompute is timed by calling
`trainers.reference.reference_logps` on an empty cache and again on the filled one (a hit).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench.common import Stopwatch, long_pairs, report, run_isolated, model_from_args, training_parser


def time_precompute(model: str, n_pairs: int, batch: int, max_length: int, cache: str) -> dict[str, Any]:
    """Worker: `reference_logps` twice on the same cache: a miss (computes, writes) and a hit."""
    import torch
    from transformers import AutoTokenizer

    from trainers.logprobs import tokenize_pairs
    from trainers.reference import reference_logps

    tokenizer = AutoTokenizer.from_pretrained(model)
    pairs, _ = tokenize_pairs(long_pairs(n_pairs), tokenizer, use_chat_template=False, max_length=max_length,
                              max_prompt_length=max_length // 2)
    out = {}
    for label in ("first", "second"):
        with Stopwatch() as sw:
            ref = reference_logps(model, pairs, cache_dir=Path(cache), pad_token_id=tokenizer.pad_token_id or 0,
                                  batch_size=batch, load_kwargs={"dtype": torch.float32}, device=torch.device("cpu"),
                                  autocast_dtype=None, progress=False)
        out[label] = {"seconds": sw.seconds, "cache_hit": ref.cache_hit}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = training_parser(__doc__.splitlines()[0], hidden=512, layers=8, steps=3)
    args = parser.parse_args(argv)

    model = model_from_args(args)
    n_params = sum(f.stat().st_size for f in Path(model).glob("*.safetensors")) / 4  # float32 on disk
    common = dict(threads=args.threads, model=model, steps=args.steps, batch=args.batch, max_length=args.max_length,
                  max_prompt_length=args.max_length // 2)
    with tempfile.TemporaryDirectory() as cache:
        precompute = run_isolated("bench.reference_cost:time_precompute", threads=args.threads, model=model,
                                  n_pairs=args.steps * args.batch, batch=args.batch, max_length=args.max_length,
                                  cache=cache)
        runs = {f"{mode}{'-lora' if lora else ''}": run_isolated("bench.common:train_project", cache=cache,
                                                                   resident_reference=mode == "resident", lora=lora,
                                                                   **common)
                for lora in (False, True) for mode in ("cached", "resident")}
    imports = run_isolated("bench.common:imports_only", threads=args.threads)["rss_mb"]
    results = {"model": model, "params_millions": round(n_params / 1e6, 1), "batch_pairs": args.batch,
               "max_length": args.max_length, "steps": args.steps, "threads": args.threads,
               "precompute": precompute,
               "peak_rss_mb": {k: r["peak_rss_mb"] for k, r in runs.items()},
               "imports_only_rss_mb": imports,
               "peak_minus_imports_mb": {k: r["peak_rss_mb"] - imports for k, r in runs.items()},
               "training_cache_hit": {k: r["ref_cache_hit"] for k, r in runs.items()}}
    ratios = []
    for suffix in ("", "-lora"):
        cached, resident = runs[f"cached{suffix}"]["peak_rss_mb"], runs[f"resident{suffix}"]["peak_rss_mb"]
        label = suffix or " (full fine-tuning)"
        ratios.append((f"peak_memory cached/resident{label}", cached / resident, "<= 0.6", cached / resident <= 0.6))
        ratios.append((f"peak_minus_imports cached/resident{label}", (cached - imports) / (resident - imports),
                       "<= 0.6", (cached - imports) / (resident - imports) <= 0.6))
    ratios.append(("precompute second/first run time (cache reuse)",
                   precompute["second"]["seconds"] / precompute["first"]["seconds"], "< 1, second run a cache hit",
                   precompute["second"]["cache_hit"] and not precompute["first"]["cache_hit"]))
    report("Reference cost: cached reference log-probs against a resident reference model", results, ratios, args.json)
    return {"results": results, "ratios": ratios}


if __name__ == "__main__":
    main()
