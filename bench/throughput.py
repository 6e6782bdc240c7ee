"""Study throughput: generation across a run's units with one engine per unit (the old way), LoRA
adapters in one engine, and weights reloaded into one engine; disk per LoRA unit; bf16 generation
on CPU; and the training section (bench/throughput_training.py) in the same run.

    python -m bench.throughput                        # SmolLM2-135M, 3 LoRA units + the reference, 32 prompts x 64 tokens
    python -m bench.throughput --sections disk        # only the disk of one trained LoRA unit
    python -m bench.throughput --tiny                 # the random 4-layer Llama, seconds (a check of the script)

Generation: the units are LoRA adapters of the study's shape (rank 16, alpha 32, every attention and
MLP projection) with seeded random weights (B ~ N(0, 0.02^2), so they change the output as training
does); the reference is the base model. Each strategy (`generate.engine_reuse`: restart, adapter,
reload) runs in a fresh process through the pipeline's own components (`evaluators.engines.engine_pool`
+ `evaluators.generation_cache.generate_to_file`, greedy, the embedded safety set's prompts), and its
wall time counts everything a run's generation stages cost: engine start-up, merges, weight reloads
and generation. Greedy agreement = the share of completions with the same tokens as `restart`'s.
bf16: the `reload` strategy again with model.dtype bfloat16 (vLLM's dtype), against float32.
The measured parts (first engine start, per-policy weight swap and generation) are also projected to
`--project-units` policies (22: the HH study's 21 units and the reference).
Disk: one unit trained for one step by `trainers.trainer.train_policy` with the study's LoRA
settings; its folder's bytes, against the merged copy (`train.lora.save_merged`), the old format.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Stopwatch, report, run_isolated

STUDY_LORA = {"r": 16, "alpha": 32,
              "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}


def make_units(base: str, n: int, out: str, seed: int = 0) -> list[str]:
    """n LoRA adapters of the study's shape on `base`, with seeded random weights, in peft format."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folders = []
    for i in range(n):
        torch.manual_seed(seed + i)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                               LoraConfig(r=STUDY_LORA["r"], lora_alpha=STUDY_LORA["alpha"],
                                          target_modules=STUDY_LORA["target_modules"]))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.02)
        folder = Path(out) / f"unit{i}"
        model.save_pretrained(folder)
        folders.append(str(folder))
    return folders


def prompt_records(n: int) -> list:
    from harness.config import DataSourceConfig
    from harness.data import load_source
    from harness.records import PromptRecord

    pairs = load_source(DataSourceConfig(format="builtin-safety")).pairs
    return [PromptRecord(f"p{i}", tuple(pairs[i % len(pairs)].prompt)) for i in range(n)]


def generate_units(strategy: str, model: str, units: list[str], prompts: int, max_new_tokens: int,
                   dtype: str = "float32", generator: str = "auto") -> dict[str, Any]:
    """Worker (fresh process): the reference and every unit through one engine pool, as a run's
    generation stages do; wall time from before the first engine starts to after the last row."""
    from evaluators.engines import Policy, engine_pool
    from evaluators.generation_cache import generate_to_file
    from harness.config import GenerateConfig, ModelConfig
    from harness.io import read_jsonl
    from harness.models import resolve_model_path

    base = resolve_model_path(model)
    settings = GenerateConfig(generator=generator, engine_reuse=strategy, max_new_tokens=max_new_tokens,
                              batch_size=prompts, temperature=0.0)
    records = prompt_records(prompts)
    out: dict[str, Any] = {"strategy": strategy, "dtype": dtype, "units": {}}
    tmp = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    try:
        with Stopwatch() as total:
            with engine_pool(ModelConfig(path=base, dtype=dtype), settings, scratch=tmp / "scratch") as pool:
                for name, path in [("reference", base), *((Path(u).name, u) for u in units)]:
                    t0 = time.perf_counter()
                    generator_ = pool.generator(Policy(path, base))
                    ready = time.perf_counter() - t0
                    file = tmp / f"{name}.jsonl"
                    stats = generate_to_file(generator_, records, file, settings, progress=False,
                                             model_sha=Policy(path, base).content_hash())
                    rows = read_jsonl(file)
                    out["units"][name] = {"ready_s": ready, "generate_s": stats.seconds, "tokens": stats.new_tokens,
                                          "engine": stats.generator,
                                          "responses": [r["response"] for r in rows]}
        out["wall_s"] = total.seconds
        out["tokens"] = sum(u["tokens"] for u in out["units"].values())
        out["generate_s"] = sum(u["generate_s"] for u in out["units"].values())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def unit_disk(model: str, steps: int = 1) -> dict[str, Any]:
    """Worker: one LoRA unit of the study's settings trained by train_policy; bytes on disk."""
    from harness.config import DataSourceConfig, LoraConfig, ModelConfig, TrainConfig, VariantConfig
    from harness.data import load_source
    from harness.models import MERGED, resolve_model_path
    from trainers.trainer import train_policy

    tmp = Path(tempfile.mkdtemp(prefix="bench-disk-"))
    try:
        pairs = load_source(DataSourceConfig(format="builtin-safety")).pairs[:4]
        lora = LoraConfig(enabled=True, r=STUDY_LORA["r"], alpha=STUDY_LORA["alpha"], save_merged=True,
                          target_modules=tuple(STUDY_LORA["target_modules"]))
        train = TrainConfig(max_steps=steps, batch_size=4, max_length=64, max_prompt_length=32, lora=lora)
        out = tmp / "unit"
        train_policy(ModelConfig(path=resolve_model_path(model), dtype="float32"), train, VariantConfig(), pairs,
                     out, seed=0, cache_dir=tmp / "cache", progress=False)
        unit = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
        merged = sum(f.stat().st_size for f in (out / MERGED).iterdir() if f.is_file())
        files = {f.name: f.stat().st_size for f in out.iterdir() if f.is_file()}
        return {"unit_mb": unit / 1e6, "merged_mb": merged / 1e6, "files": files}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def agreement(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Share of completions (over all units and prompts) with the same text in both runs."""
    pairs = [(x, y) for name in a["units"] for x, y in zip(a["units"][name]["responses"], b["units"][name]["responses"])]
    return sum(x == y for x, y in pairs) / len(pairs)


def projected_wall(run: dict[str, Any], n_units: int) -> float:
    """Wall seconds for n_units policies from this run's parts: the first policy's engine start, the
    mean weight swap (ready_s) and generation time of the others, each per policy."""
    parts = list(run["units"].values())
    later = parts[1:] or parts
    swap = sum(u["ready_s"] for u in later) / len(later)
    gen = sum(u["generate_s"] for u in later) / len(later)
    return parts[0]["ready_s"] + parts[0]["generate_s"] + (n_units - 1) * (swap + gen)


def training_ratios(argv: list[str]) -> list[tuple[str, float, str, bool | None]]:
    """The training section: bench/throughput_training.py's ratios (tokens/s, bf16, MFU)."""
    from bench import throughput_training

    return throughput_training.main(argv)["ratios"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--units", type=int, default=3, help="LoRA units (the reference comes on top)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--strategies", default="restart,adapter,reload")
    parser.add_argument("--project-units", type=int, default=22,
                        help="policies to project the wall time to (the HH study: 21 units + the reference)")
    parser.add_argument("--sections", default="generation,bf16,disk,training")
    parser.add_argument("--generator", default="vllm")
    parser.add_argument("--tiny", action="store_true", help="the random 4-layer Llama, 1 unit, 4 prompts x 8 tokens")
    parser.add_argument("--training-args", default="", help="arguments for bench.throughput_training")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if args.tiny:
        args.model, args.units, args.prompts, args.max_new_tokens = "builtin:tiny-llama-random", 1, 4, 8
        args.training_args = args.training_args or "--tiny"
    sections = args.sections.split(",")
    # Adapters are served by vLLM only.
    strategies = [s for s in args.strategies.split(",") if s != "adapter" or args.generator == "vllm"]

    from harness.models import resolve_model_path

    results: dict[str, Any] = {"model": args.model, "units": args.units, "prompts": args.prompts,
                               "max_new_tokens": args.max_new_tokens}
    ratios: list[tuple[str, float, str, bool | None]] = []
    work = Path(tempfile.mkdtemp(prefix="bench-units-"))
    try:
        if "generation" in sections or "bf16" in sections:
            units = make_units(resolve_model_path(args.model), args.units, str(work))
            runs = {}
            for s in strategies if "generation" in sections else ["reload"]:
                runs[s] = run_isolated("bench.throughput:generate_units", strategy=s, model=args.model, units=units,
                                       prompts=args.prompts, max_new_tokens=args.max_new_tokens,
                                       generator=args.generator)
            if "bf16" in sections:
                runs["reload-bf16"] = run_isolated("bench.throughput:generate_units", strategy="reload",
                                                   model=args.model, units=units, prompts=args.prompts,
                                                   max_new_tokens=args.max_new_tokens, dtype="bfloat16",
                                                   generator=args.generator)
            results["generation"] = {k: {**v, "units": {n: {f: x for f, x in u.items() if f != "responses"}
                                                       for n, u in v["units"].items()}} for k, v in runs.items()}
            old = runs.get("restart")
            for s in ("adapter", "reload"):
                if old and s in runs:
                    target = "<= 0.4" if s == "reload" else "(compared)"
                    value = runs[s]["wall_s"] / old["wall_s"]
                    ratios.append((f"generation_wall {s}/restart", value, target,
                                   value <= 0.4 if s == "reload" else None))
                    ratios.append((f"greedy_agreement {s} vs restart", agreement(runs[s], old), "1.0 for reload",
                                   agreement(runs[s], old) == 1.0 if s == "reload" else None))
                    projected = projected_wall(runs[s], args.project_units) / projected_wall(old, args.project_units)
                    ratios.append((f"generation_wall projected to {args.project_units} policies {s}/restart", projected,
                                   "<= 0.4" if s == "reload" else "(compared)", projected <= 0.4 if s == "reload" else None))
            if "reload-bf16" in runs:
                fp32, bf16 = runs["reload"], runs["reload-bf16"]
                ratios.append(("generation tokens_per_s bf16/float32", (bf16["tokens"] / bf16["generate_s"])
                               / (fp32["tokens"] / fp32["generate_s"]), "(measured)", None))
                ratios.append(("greedy_agreement bf16 vs float32", agreement(bf16, fp32), "(measured)", None))
        if "disk" in sections:
            disk = run_isolated("bench.throughput:unit_disk", threads=1, model=args.model)
            results["disk"] = disk
            ratios.append(("disk_per_lora_unit_mb", disk["unit_mb"], "<= 50", disk["unit_mb"] <= 50))
            ratios.append(("disk_per_lora_unit adapter/merged", disk["unit_mb"] / disk["merged_mb"], "(compared)", None))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if "training" in sections:
        ratios.extend(training_ratios(args.training_args.split()))
    report("Study throughput: generation engine reuse, disk per LoRA unit, bf16 generation, training", results,
           ratios, args.json)
    return {"results": results, "ratios": ratios}


if __name__ == "__main__":
    main()
