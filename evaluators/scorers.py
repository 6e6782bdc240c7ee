"""Scorers: (prompt, response) pairs in, one float each out.

One interface: `Scorer.score(prompts, responses) -> list[float]`, plus the attributes `score_type`
("reward" or "cost"), `threshold` and `info` (what to record with the scores). Every scorer is one
registered class, built from a model folder and a `harness.config.ScorerConfig`:

- `hf-classifier`: any Hugging Face sequence-classification model with a single output
  (e.g. OpenAssistant's DeBERTa reward model); the (prompt, response) pair is a text pair.
- `beaver`: PKU-Alignment's `LlamaForScore` reward and cost models, loaded natively (a
  `LlamaModel` plus the score head and normaliser read from the safetensors), no remote code.
- `bradley-terry`: the project's own reward/cost models (trainers/scorer_training.py), a
  sequence classifier plus `scorer.json` (harness/scorer_format.py: template, max length, calibration offset).
- `chat-classifier` and `guard` (evaluators/chat_scorers.py): models that read the conversation
  through their own chat template (Skywork-Reward-V2 reward models, Llama Guard moderation models).

Sign conventions: reward higher = more helpful; cost higher = more harmful; a response is safe when
cost <= threshold (default 0, as safe-rlhf uses). Scores are checked: a non-finite value or an
output of the wrong shape is a UserError naming the scorer and the row.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from harness.config import ScorerConfig
from harness.errors import UserError
from harness.models import check_weights_safe, default_device, load_kwargs
from harness.records import PreferencePair
from harness.registries import SCORERS
# How a pair is encoded and scorer.json: shared with the scorer trainer, so they live in the floor.
from harness.scorer_format import (PROMPT_TEMPLATES, SCORER_FILE, Encoding, Prompt, as_messages,  # noqa: F401
                                   encode_pair, read_scorer_file)
from harness.registry import suggest


class ScoreError(UserError):
    """A scorer output that is not one finite number per row; `row` indexes the inputs of `score`."""

    def __init__(self, scorer: str, reason: str, row: int) -> None:
        super().__init__(f"scorer {scorer}: {reason} (input row {row}).")
        self.scorer, self.reason, self.row = scorer, reason, row

# --------------------------------------------------------------------------------------------
# The interface.
# --------------------------------------------------------------------------------------------


def scorer_options(config: ScorerConfig, defaults: dict[str, Any]) -> dict[str, Any]:
    """`config.options` over `defaults` (a scorer class's OPTIONS); an unknown key or a value of
    another type is a UserError naming `scorers.<name>.options.<key>`."""
    for key, value in config.options.items():
        where = f"scorers.{config.name}.options.{key}"
        if key not in defaults:
            raise UserError(f"config key '{where}': unknown option of scorer type {config.type}."
                            f"{suggest(key, list(defaults))} Valid: {', '.join(defaults) or '(none)'}.")
        want = type(defaults[key])
        if not isinstance(value, want) or isinstance(value, bool) != (want is bool):
            raise UserError(f"config key '{where}': expected {want.__name__}, got {value!r}.")
    return {**defaults, **config.options}


class Scorer:
    """A reward or cost model: `score(prompts, responses) -> list[float]`.

    Subclasses implement `_encode` (one input's token ids) and `_forward` (a padded batch to a
    tensor of shape [batch]). This class batches by length: inputs are sorted by token count,
    batched, scored and put back in their original order, so little compute goes to padding.
    """

    score_type: str
    threshold: float
    # The options a scorer type takes (`scorers.<name>.options`), with their defaults.
    OPTIONS: dict[str, Any] = {}

    @classmethod
    def check_config(cls, config: ScorerConfig) -> None:
        """UserError for options this scorer type does not take (checked when the config loads)."""
        scorer_options(config, cls.OPTIONS)

    def __init__(self, path: str, config: ScorerConfig) -> None:
        if not Path(path).is_dir():
            raise UserError(f"scorer '{config.name}': model folder '{path}' does not exist. "
                            f"Point scorers.{config.name}.path (or --scorer TYPE:PATH) at a model folder.")
        self.check_config(config)
        self.name = config.name
        self.path = path
        self.score_type = config.score_type
        self.threshold = config.threshold
        self.batch_size = config.batch_size
        self.device = default_device()
        self.tokenizer: Any = None
        # Everything a results file should record about this scorer.
        self.info: dict[str, Any] = {"name": config.name, "type": config.type, "path": path,
                                     "score_type": config.score_type, "threshold": config.threshold}

    def _check_score_type(self, declared: str, where: str) -> None:
        """A model's own score type must match the config: a cost used as a reward flips every result."""
        if declared != self.score_type:
            raise UserError(f"scorer '{self.name}': {where} says score_type '{declared}' but the config says "
                            f"'{self.score_type}'. Set scorers.{self.name}.score_type={declared} "
                            "(reward: higher = more helpful; cost: higher = more harmful).")

    def _encode(self, prompt: Prompt, response: str) -> Encoding:
        raise NotImplementedError

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def metadata(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[dict[str, Any]] | None:
        """Extra fields for each score row (e.g. the category a guard names), or None when the scorer
        records none."""
        return None

    @torch.no_grad()
    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        """One float per (prompt, response), in input order."""
        if len(prompts) != len(responses):
            raise UserError(f"scorer '{self.name}': {len(prompts)} prompts but {len(responses)} responses.")
        encodings = [self._encode(p, r) for p, r in zip(prompts, responses)]
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i]["input_ids"]))
        scores: list[float] = [0.0] * len(encodings)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            batch = self.tokenizer.pad([encodings[i] for i in rows], return_tensors="pt")
            values = self._forward({k: v.to(self.device) for k, v in batch.items()})
            who = f"'{self.name}' ({self.path})"
            if tuple(values.shape) != (len(rows),):
                raise ScoreError(who, f"the model returned shape {list(values.shape)} for a batch of {len(rows)}, "
                                      "expected one score per input; use a model with a single output", rows[0])
            for row, value in zip(rows, values.float().cpu().tolist()):
                if not math.isfinite(value):
                    raise ScoreError(who, f"non-finite score {value}; check the model's weights and dtype", row)
                scores[row] = value
        return scores


# --------------------------------------------------------------------------------------------
# Scorers.
# --------------------------------------------------------------------------------------------


@SCORERS.register("hf-classifier")
class HFClassifierScorer(Scorer):
    """Any Hugging Face sequence-classification model with one output; input = (question, answer) text pair."""

    template = "qa"

    def __init__(self, path: str, config: ScorerConfig) -> None:
        super().__init__(path, config)
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        check_weights_safe(path, allow_pickle_weights=False)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, **load_kwargs(False, False))
        if self.model.config.num_labels != 1:
            raise UserError(f"scorer '{self.name}': {path} has {self.model.config.num_labels} outputs "
                            "(num_labels); a reward or cost model has exactly one.")
        self.model.to(self.device).eval()
        self.max_length = min(self.tokenizer.model_max_length,
                              getattr(self.model.config, "max_position_embeddings", 512))
        self.info["template"] = self.template

    def _encode(self, prompt: Prompt, response: str) -> Encoding:
        return encode_pair(self.tokenizer, self.template, prompt, response, self.max_length)

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**batch).logits.squeeze(-1)


@SCORERS.register("bradley-terry")
class BradleyTerryScorer(HFClassifierScorer):
    """The project's own Bradley-Terry reward/cost model (`bdpo train-scorer`): classifier + scorer.json."""

    def __init__(self, path: str, config: ScorerConfig) -> None:
        meta_path = Path(path) / SCORER_FILE
        self.meta = read_scorer_file(path, config.name)
        super().__init__(path, config)
        self._check_score_type(self.meta["score_type"], str(meta_path))
        self.template = self.meta["template"]
        self.max_length = int(self.meta["max_length"])
        # Calibration shift fixed by the scorer stage (see evaluators/scorer_calibration.py), so 0 is meaningful.
        self.offset = float(self.meta["offset"])
        self.info.update(template=self.template, offset=self.offset, heldout=self.meta.get("heldout"),
                         sign_inverted=self.meta.get("sign_inverted", False))
        if self.meta.get("sign_inverted"):
            warnings.warn(f"scorer '{self.name}' ({path}) ranked its own held-out pairs below chance: its sign "
                          "looks inverted (see scorer.json 'heldout').", stacklevel=2)

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return super()._forward(batch) - self.offset


# beaver's conversation template (safe-rlhf's PROMPT_BEGIN / PROMPT_USER / PROMPT_ASSISTANT).
BEAVER_BEGIN, BEAVER_USER, BEAVER_ASSISTANT = "BEGINNING OF CONVERSATION: ", "USER: {input} ", "ASSISTANT:"


def beaver_text(prompt: Prompt, response: str, eos_token: str) -> str:
    """`BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{response}<eos>`; earlier assistant turns
    end with the EOS token, as safe-rlhf formats multi-turn prompts."""
    parts = [BEAVER_BEGIN]
    for m in as_messages(prompt):
        if m["role"] == "assistant":
            parts += [m["content"], eos_token]
        else:
            parts += [BEAVER_USER.format(input=m["content"]), BEAVER_ASSISTANT]
    return "".join([*parts, response, eos_token])


@SCORERS.register("beaver")
class BeaverScorer(Scorer):
    """PKU-Alignment beaver reward/cost models (LlamaForScore): Llama body + score head, loaded natively."""

    def __init__(self, path: str, config: ScorerConfig) -> None:
        super().__init__(path, config)
        from safetensors import safe_open
        from transformers import AutoTokenizer, LlamaConfig, LlamaModel

        files = sorted(Path(path).glob("*.safetensors"))
        if not files:
            raise UserError(f"scorer '{self.name}': no .safetensors weights in {path}. Convert the checkpoint "
                            "to safetensors (pickled weights can run code when loaded).")
        model_config = LlamaConfig.from_pretrained(path)
        self._check_score_type(getattr(model_config, "score_type", "reward"), f"{path}/config.json")
        if getattr(model_config, "score_dim", 1) != 1:
            raise UserError(f"scorer '{self.name}': {path} has score_dim {model_config.score_dim}; "
                            "a reward or cost model has score_dim 1.")
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        # The checkpoint's `model.*` keys are a LlamaModel's weights under its base-model prefix.
        body, loading = LlamaModel.from_pretrained(path, config=model_config, dtype=dtype, output_loading_info=True,
                                                   **load_kwargs(False, False))
        if loading["missing_keys"]:
            raise UserError(f"scorer '{self.name}': {path} lacks Llama weights {sorted(loading['missing_keys'])[:3]}; "
                            "is it a beaver (LlamaForScore) checkpoint?")
        extra: dict[str, torch.Tensor] = {}
        for f in files:
            with safe_open(str(f), framework="pt") as st:
                extra.update({k: st.get_tensor(k) for k in st.keys() if k.startswith(("score_head.", "normalizer."))})
        if "score_head.weight" not in extra:
            raise UserError(f"scorer '{self.name}': {path} has no 'score_head.weight'; not a beaver score model.")
        bias = bool(getattr(model_config, "bias", False))
        self.head = torch.nn.Linear(model_config.hidden_size, 1, bias=bias, dtype=dtype)
        self.head.load_state_dict({k.removeprefix("score_head."): v for k, v in extra.items()
                                   if k.startswith("score_head.")})
        self.body = body.to(self.device).eval()
        self.head.to(self.device).eval()
        # safe-rlhf's normaliser: checkpoint buffers win over config.json's mean/var (they load last).
        self.do_normalize = bool(getattr(model_config, "do_normalize", False))
        mean = extra.get("normalizer.mean", torch.tensor(getattr(model_config, "mean", None) or [0.0]))
        var = extra.get("normalizer.var", torch.tensor(getattr(model_config, "var", None) or [1.0]))
        self.mean, self.std = float(mean.reshape(-1)[0]), math.sqrt(float(var.reshape(-1)[0]))
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.unk_token or self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        # The score is read at the last token: if a text must be cut, keep its end.
        self.tokenizer.truncation_side = "left"
        self.max_length = getattr(model_config, "max_position_embeddings", 2048)
        self.info.update(template="beaver", do_normalize=self.do_normalize, mean=self.mean, std=self.std)

    def _encode(self, prompt: Prompt, response: str) -> Encoding:
        text = beaver_text(prompt, response, self.tokenizer.eos_token or "")
        return dict(self.tokenizer(text, truncation=True, max_length=self.max_length))

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """End score: the head at each row's last attended token; shape [batch]."""
        mask = batch["attention_mask"]
        hidden = self.body(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state  # [B, L, H]
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask.bool() * positions).amax(dim=1)  # [B]
        end = self.head(hidden[torch.arange(hidden.shape[0], device=hidden.device), last]).squeeze(-1).float()
        if not self.do_normalize:
            return end
        # safe-rlhf: reward 'affine' (x - mean) / std, cost 'scale' x / std, epsilon 1e-8.
        if self.score_type == "reward":
            return (end - self.mean) / (self.std + 1e-8)
        return end / (self.std + 1e-8)


def build_scorer(config: ScorerConfig, path: str | None = None) -> Scorer:
    """The registered scorer class `config.type`, built from `path` (default: config.path)."""
    return SCORERS.get(config.type)(path or config.path, config)


# --------------------------------------------------------------------------------------------
# Held-out pairwise accuracy and the sign check.
# --------------------------------------------------------------------------------------------


def pairwise_accuracy(chosen: Sequence[float], rejected: Sequence[float], score_type: str,
                      confidence: float = 0.95) -> dict[str, Any]:
    """Share of pairs ordered as the data orders them: reward(chosen) > reward(rejected), or
    cost(chosen) < cost(rejected) (the chosen response is the safer one). Ties count as wrong, as
    in reward-bench. The interval is Wilson's score interval for a binomial proportion."""
    from scipy.stats import binomtest

    if len(chosen) != len(rejected) or not chosen:
        raise ValueError("pairwise_accuracy: need equally many chosen and rejected scores, at least one")
    sign = 1.0 if score_type == "reward" else -1.0
    margins = [sign * (c - r) for c, r in zip(chosen, rejected)]
    correct = sum(m > 0 for m in margins)
    ci = binomtest(correct, len(margins)).proportion_ci(confidence_level=confidence, method="wilson")
    return {"n": len(margins), "correct": correct, "ties": sum(m == 0 for m in margins),
            "accuracy": correct / len(margins), "ci_low": float(ci.low), "ci_high": float(ci.high),
            "confidence": confidence, "interval": "wilson"}


def evaluate_pairs(scorer: Scorer, pairs: Sequence[PreferencePair], confidence: float = 0.95) -> dict[str, Any]:
    """Pairwise accuracy of `scorer` on `pairs`, plus `sign_inverted`: true (and a warning) when the
    whole confidence interval lies below chance, i.e. the scorer prefers the rejected responses."""
    prompts = [p.prompt for p in pairs]
    chosen = scorer.score(prompts, [p.chosen for p in pairs])
    rejected = scorer.score(prompts, [p.rejected for p in pairs])
    result = pairwise_accuracy(chosen, rejected, scorer.score_type, confidence)
    result["sign_inverted"] = result["ci_high"] < 0.5
    if result["sign_inverted"]:
        warnings.warn(f"scorer '{scorer.name}' ({scorer.path}) orders {result['accuracy']:.1%} of {result['n']} "
                      f"validation pairs correctly (CI high {result['ci_high']:.3f} < 0.5): its sign looks inverted "
                      f"for a {scorer.score_type} (reward: higher = better; cost: higher = more harmful).",
                      stacklevel=2)
    return result

