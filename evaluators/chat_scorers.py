"""Scorers that read a conversation through the model's own chat template.

- `chat-classifier`: a decoder sequence classifier with one output (Skywork-Reward-V2 style: a
  Qwen3 or Llama `...ForSequenceClassification` plus a chat template). The prompt messages and the
  response, as an assistant turn, are rendered with the model's template; the score is the head's
  output at the last token.
- `guard`: a generative moderation model (Llama Guard 3 style; ShieldGemma with its own words and
  prompt). Its moderation prompt is the model's chat template applied to the conversation; the cost
  is the log-odds of the "unsafe" word against the "safe" word as the first generated token, read
  from the logits (nothing is sampled): `logit[unsafe] - logit[safe]`, so cost <= 0 means "safe"
  is the more likely answer. With `options.categories` the greedy answer is also generated and the
  category it names (Llama Guard's second line, e.g. "S1") goes into the score rows.

Both are registered in `harness.registries.SCORERS`, load safetensors only and never run remote
code. A model that lacks what its scorer needs (a chat template, one output, single-token verdict
words) is refused when the scorer is built, before anything is scored.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch

from evaluators.scorers import Encoding, Prompt, Scorer, as_messages, scorer_options
from harness.config import ScorerConfig
from harness.errors import UserError
from harness.models import check_weights_safe, load_kwargs
from harness.registries import SCORERS


def conversation(prompt: Prompt, response: str) -> list[dict[str, str]]:
    """The prompt's messages plus the response as the assistant's turn."""
    messages = as_messages(prompt)
    if not messages or messages[-1]["role"] != "user":
        raise UserError(f"scorer input: the prompt must end with the user's message, got {messages[-1:]!r}.")
    return [*messages, {"role": "assistant", "content": response}]


def require_chat_template(tokenizer: Any, name: str, path: str, why: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"scorer '{name}': {path} has no chat template (tokenizer_config.json 'chat_template' "
                        f"or chat_template.jinja); {why}.")


def template_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of chat-templated text: the template writes its own special tokens (BOS included),
    so none are added, as training and generation tokenise templated text (Skywork-Reward-V2's model
    card strips the template's BOS and lets the tokenizer add it back: the same ids)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@SCORERS.register("chat-classifier")
class ChatClassifierScorer(Scorer):
    """Decoder sequence classifier with one output read through its chat template (Skywork-Reward-V2)."""

    # max_length: tokens kept from the end of a conversation (0 = the model's context length).
    OPTIONS = {"max_length": 0}

    def __init__(self, path: str, config: ScorerConfig) -> None:
        super().__init__(path, config)
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        options = scorer_options(config, self.OPTIONS)
        check_weights_safe(path, allow_pickle_weights=False)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        require_chat_template(self.tokenizer, self.name, path,
                              "chat-classifier renders the conversation with it (for (question, answer) "
                              "text-pair classifiers use type hf-classifier)")
        model_config = AutoConfig.from_pretrained(path)
        if model_config.num_labels != 1:
            raise UserError(f"scorer '{self.name}': {path} has {model_config.num_labels} outputs (num_labels); "
                            "a reward or cost model has exactly one.")
        declared = getattr(model_config, "score_type", None)
        if declared is not None:
            self._check_score_type(declared, f"{path}/config.json")
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype,
                                                                            **load_kwargs(False, False))
        except ValueError as e:
            raise UserError(f"scorer '{self.name}': {path} does not load as a sequence classifier "
                            f"({str(e).splitlines()[0]}).") from None
        # The score is read here at the last attended token, so the head must be separable from the body.
        self.body = getattr(self.model, self.model.base_model_prefix, None)
        self.head = getattr(self.model, "score", None)
        if self.body is None or not isinstance(self.head, torch.nn.Linear):
            raise UserError(f"scorer '{self.name}': {path} ({type(self.model).__name__}) is not a decoder "
                            "sequence classifier with a linear 'score' head (Llama, Qwen, Gemma, Mistral); "
                            "for encoder classifiers use type hf-classifier.")
        self.model.to(self.device).eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "left"
        text_config = model_config.get_text_config()
        self.max_length = options["max_length"] or getattr(text_config, "max_position_embeddings", 4096)
        self.info.update(template="chat", max_length=self.max_length)

    def _encode(self, prompt: Prompt, response: str) -> Encoding:
        text = self.tokenizer.apply_chat_template(conversation(prompt, response), tokenize=False)
        ids = template_ids(self.tokenizer, text)[-self.max_length:]  # keep the end, where the score is read
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The score head at each row's last attended token; shape [batch]."""
        mask = batch["attention_mask"]
        hidden = self.body(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state  # [B, L, H]
        last = mask.sum(dim=1) - 1  # right padding: [B]
        return self.head(hidden[torch.arange(hidden.shape[0], device=hidden.device), last]).squeeze(-1).float()


def single_token(tokenizer: Any, word: str) -> int | None:
    """The id of `word` when the tokenizer writes it as exactly one token, else None."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def parse_guard_output(text: str, unsafe_word: str) -> str | None:
    """The category a guard names: the line after its "unsafe" verdict (Llama Guard writes
    "unsafe\\nS1,S10"); None for a safe verdict or when it names none."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) < 2 or lines[0] != unsafe_word:
        return None
    return lines[1]


GUARD_OPTIONS: dict[str, Any] = {
    # The words the model answers with: Llama Guard 3 "safe" / "unsafe"; ShieldGemma "No" / "Yes".
    "safe_word": "safe",
    "unsafe_word": "unsafe",
    # Text after the rendered template and before the verdict word (e.g. "\n\n" for a template that
    # ends at the assistant header without the blank line the model writes first).
    "answer_prefix": "",
    # Record the category the model names (greedy answer of up to category_tokens tokens) in the score rows.
    "categories": False,
    "category_tokens": 16,
    # Longest moderation prompt in tokens (0 = the model's context length); longer ones are refused.
    "max_length": 0,
}


@SCORERS.register("guard")
class GuardScorer(Scorer):
    """Generative moderation model (Llama Guard 3): cost = logit('unsafe') - logit('safe') at the first answer token."""

    OPTIONS = GUARD_OPTIONS

    def __init__(self, path: str, config: ScorerConfig) -> None:
        super().__init__(path, config)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._check_score_type("cost", "the guard scorer (its score is the log-odds of unsafe: a cost)")
        self.options = scorer_options(config, self.OPTIONS)
        check_weights_safe(path, allow_pickle_weights=False)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        require_chat_template(self.tokenizer, self.name, path, "the guard builds its moderation prompt with it")
        words = {self.options["safe_word"]: None, self.options["unsafe_word"]: None}
        for word in words:
            words[word] = single_token(self.tokenizer, word)
        missing = [w for w, i in words.items() if i is None]
        if missing or len(set(words.values())) != 2:
            raise UserError(f"scorer '{self.name}': {path}'s tokenizer does not write {missing or list(words)!r} as "
                            "one token each; the guard reads the verdict from one token's logit (set "
                            f"scorers.{self.name}.options.safe_word / unsafe_word to the model's answer words).")
        self.safe_id, self.unsafe_id = words[self.options["safe_word"]], words[self.options["unsafe_word"]]
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        try:
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **load_kwargs(False, False))
        except ValueError as e:
            raise UserError(f"scorer '{self.name}': {path} does not load as a causal language model "
                            f"({str(e).splitlines()[0]}).") from None
        self.model.to(self.device).eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Left padding: every row's next-token position is the last one, so one position's logits suffice.
        self.tokenizer.padding_side = "left"
        self.max_length = (self.options["max_length"]
                           or getattr(self.model.config.get_text_config(), "max_position_embeddings", 4096))
        self.info.update(template="chat (moderation)", safe_word=self.options["safe_word"],
                         unsafe_word=self.options["unsafe_word"], answer_prefix=self.options["answer_prefix"],
                         categories=self.options["categories"])

    def _encode(self, prompt: Prompt, response: str) -> Encoding:
        text = self.tokenizer.apply_chat_template(conversation(prompt, response), tokenize=False)
        ids = template_ids(self.tokenizer, text + self.options["answer_prefix"])
        if len(ids) > self.max_length:
            raise UserError(f"scorer '{self.name}': a moderation prompt of {len(ids)} tokens exceeds the model's "
                            f"{self.max_length}; shorten generate.max_new_tokens or the prompts.")
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}

    def _positions(self, mask: torch.Tensor) -> torch.Tensor:
        """Position ids of a left-padded batch: 0 at each row's first real token; shape [B, L]."""
        return (mask.cumsum(dim=1) - 1).clamp(min=0)

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """log p(unsafe) - log p(safe) for the first answer token; shape [batch]."""
        mask = batch["attention_mask"]
        logits = self.model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=self._positions(mask),
                            logits_to_keep=1).logits[:, -1].float()  # [B, V]
        return logits[:, self.unsafe_id] - logits[:, self.safe_id]

    @torch.no_grad()
    def metadata(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[dict[str, Any]] | None:
        """With options.categories: per row the greedy answer ('guard_output') and the category it
        names ('category', None when safe or unnamed)."""
        if not self.options["categories"]:
            return None
        from transformers import GenerationConfig

        config = GenerationConfig(max_new_tokens=self.options["category_tokens"], do_sample=False, top_k=None,
                                  top_p=None, temperature=None, pad_token_id=self.tokenizer.pad_token_id,
                                  eos_token_id=self.tokenizer.eos_token_id)
        rows: list[dict[str, Any]] = []
        for start in range(0, len(prompts), self.batch_size):
            encodings = [self._encode(p, r) for p, r in zip(prompts[start:start + self.batch_size],
                                                             responses[start:start + self.batch_size])]
            batch = {k: v.to(self.device) for k, v in self.tokenizer.pad(encodings, return_tensors="pt").items()}
            out = self.model.generate(**batch, generation_config=config)[:, batch["input_ids"].shape[1]:]
            for tokens in out.tolist():
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                rows.append({"guard_output": text,
                             "category": parse_guard_output(text, self.options["unsafe_word"])})
        blank = [r["guard_output"] for r in rows if r["guard_output"][:1].isspace()]
        if blank:
            # The cost is read where the answer starts: a model that first writes blank lines needs them
            # as the answer prefix, or its verdict logits are read one position too early.
            warnings.warn(f"scorer '{self.name}' ({self.path}): {len(blank)} of {len(rows)} answers start with "
                          f"whitespace ({blank[0][:12]!r}...); set scorers.{self.name}.options.answer_prefix "
                          "to that text so the verdict is read at the answer's first word.", stacklevel=2)
        return rows
