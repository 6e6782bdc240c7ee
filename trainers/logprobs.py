"""Preference pairs to token ids, one concatenated batch, and sequence log-probs.

Tokenisation (`tokenize_pairs`): the prompt is rendered by `harness.data.render_prompt` and each
reply by `harness.data.render_response` (the one place text is made), then
    prompt_ids = tok(prompt_text)                full_ids = tok(prompt_text + response_text)
With a chat template the text already holds its special tokens (add_special_tokens=False);
plain text gets the tokenizer's own (a BOS for Llama). The prompt/response boundary is checked on
tokens: when prompt_ids is a prefix of full_ids (the usual case) the response is the rest, so the
model is trained on exactly the tokens it sees at generation. When tokens merge across the
boundary it is not a prefix; the boundary then moves to where the two diverge (as TRL does), the
pair is counted in `TokenizeStats.boundary_merged`, and the trained sequence is still exactly
tok(prompt_text + response_text).

Truncation, in this order: the prompt keeps its last `max_prompt_length` tokens (and its first
token when that is BOS); the response then keeps its first `max_length - len(prompt)` tokens.
Counts of both are in `TokenizeStats` and are logged and recorded by the trainer.

Batch layout (`collate`): rows 0..B-1 are prompt+chosen, rows B..2B-1 prompt+rejected, right
padded; `response_mask` marks the response tokens. One forward over all 2B rows gives both
log-probs (`sequence_logps`), so chosen and rejected see the same weights and the same dropout
draw sequence, and distributed wrappers (DDP, FSDP, ZeRO-3) see one forward per step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.data import render_prompt, render_response, uses_chat_template
from harness.io import sha256_json
from harness.records import PreferencePair


@dataclass(frozen=True)
class TokenizedPair:
    """A pair as token ids: the model reads prompt_ids + chosen_ids (or + rejected_ids)."""

    id: str
    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]


@dataclass
class TokenizeStats:
    """What tokenisation did to the data; every count is a number of pairs."""

    pairs: int = 0
    max_length: int = 0
    max_prompt_length: int = 0
    chat_template: bool = False
    prompt_truncated: int = 0
    chosen_truncated: int = 0
    rejected_truncated: int = 0
    # Tokens merged across the prompt/response boundary (see the module docstring).
    boundary_merged: int = 0
    # After truncation chosen and rejected are the same tokens: such a pair carries no signal.
    identical_after_truncation: int = 0

    def summary(self) -> str:
        template = "chat template" if self.chat_template else "plain text (no chat template)"
        return (f"{self.pairs} pairs tokenised ({template}); max_length={self.max_length}, "
                f"max_prompt_length={self.max_prompt_length}: prompts cut from the left in {self.prompt_truncated}, "
                f"chosen cut in {self.chosen_truncated}, rejected cut in {self.rejected_truncated}, "
                f"boundary merged in {self.boundary_merged}, identical after truncation in "
                f"{self.identical_after_truncation}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _cut_prompt(ids: list[int], limit: int, bos: int | None) -> list[int]:
    """The last `limit` tokens, keeping a leading BOS (models are trained to see it first)."""
    if len(ids) <= limit:
        return ids
    if bos is not None and ids and ids[0] == bos:
        return [bos] + ids[len(ids) - limit + 1:]
    return ids[len(ids) - limit:]


def tokenize_pairs(pairs: Sequence[PreferencePair], tokenizer: Any, *, use_chat_template: bool, max_length: int,
                   max_prompt_length: int) -> tuple[list[TokenizedPair], TokenizeStats]:
    """Token ids of every pair (in order) and the counts of what truncation and the boundary check did."""
    templated = uses_chat_template(tokenizer, use_chat_template)
    stats = TokenizeStats(pairs=len(pairs), max_length=max_length, max_prompt_length=max_prompt_length,
                          chat_template=templated)

    def ids(text: str) -> list[int]:
        # verbose=False: texts longer than the model's limit are expected here; truncation follows.
        return list(tokenizer(text, add_special_tokens=not templated, verbose=False)["input_ids"])

    out = []
    for pair in pairs:
        prompt_text = render_prompt(pair.prompt, tokenizer, use_chat_template)
        prompt_ids = ids(prompt_text)
        responses = []
        for reply in (pair.chosen, pair.rejected):
            full = ids(prompt_text + render_response(reply, tokenizer, use_chat_template))
            split = _common_prefix(prompt_ids, full)
            if split < len(prompt_ids):
                stats.boundary_merged += 1
            responses.append((full[:split], full[split:]))
        # Both replies must share the prompt tokens; after a merge the shorter common prefix is it.
        split = min(len(p) for p, _ in responses)
        prompt = responses[0][0][:split]
        chosen = responses[0][0][split:] + responses[0][1]
        rejected = responses[1][0][split:] + responses[1][1]

        cut = _cut_prompt(prompt, max_prompt_length, tokenizer.bos_token_id)
        stats.prompt_truncated += len(cut) < len(prompt)
        room = max_length - len(cut)
        stats.chosen_truncated += len(chosen) > room
        stats.rejected_truncated += len(rejected) > room
        chosen, rejected = chosen[:room], rejected[:room]
        stats.identical_after_truncation += chosen == rejected
        out.append(TokenizedPair(pair.id, tuple(cut), tuple(chosen), tuple(rejected)))
    return out, stats


def tokenization_hash(tokenized: Sequence[TokenizedPair]) -> str:
    """Hash of the exact token ids (and pair ids, in order): any change of data, template,
    tokenizer or truncation changes it."""
    return sha256_json([[p.id, p.prompt_ids, p.chosen_ids, p.rejected_ids] for p in tokenized])


def collate(pairs: Sequence[TokenizedPair], pad_token_id: int) -> dict[str, Tensor]:
    """One right-padded batch of 2B sequences: chosen rows first, then rejected rows.

    Returns input_ids, attention_mask, response_mask: [2B, T] (long); response_mask is 1 on the
    response tokens (the ones whose log-probs count).
    """
    rows = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]
    width = max(len(prompt) + len(resp) for prompt, resp in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    response_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (prompt, resp) in enumerate(rows):
        n = len(prompt) + len(resp)
        input_ids[i, :n] = torch.tensor(prompt + resp, dtype=torch.long)
        attention_mask[i, :n] = 1
        response_mask[i, len(prompt):n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def sequence_logps(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor,
                   response_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Summed log-probs of the response tokens, one forward.

    Shapes: input_ids, attention_mask, response_mask [N, T] -> (logps [N] float32, n_tokens [N] long).
    Token t is scored by the logits at t - 1; the log-softmax runs in float32 even under bf16.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    labels = input_ids[:, 1:]
    mask = response_mask[:, 1:].bool()
    token_logps = -F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels, reduction="none")
    # where, not multiply: padding positions may hold any value and must not leak (0 * inf = nan).
    return torch.where(mask, token_logps, 0.0).sum(-1), mask.sum(-1)
