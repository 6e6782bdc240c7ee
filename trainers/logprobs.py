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

Log-probs at response positions only (`sequence_logps`): the model's body runs on every token
(the prompt is context), but the LM head, the log-softmax and their backward run only at the
positions that score a response token, `LOGPROB_CHUNK` positions at a time, so [rows, T, vocab]
logits are never built (TRL 1.16's fused LM head does the same). Models whose head does more than
a plain bias-free projection (logit soft-capping or scaling) take the full-logits path
(`full_logits_logps`), which gives the same numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import inspect
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


# Response positions per LM-head chunk: [chunk, vocab] float32 logits at a time (50 MB for a 49k vocabulary).
LOGPROB_CHUNK = 256
# Config fields of models whose logits are more than hidden @ lm_head.weight.T (soft-capping, scaling).
_HEAD_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier",
                    "lm_head_multiplier")


def padded_share(pairs: Sequence[TokenizedPair], order: Sequence[int], batch_size: int) -> float:
    """Share of the tokens in the collated batches that are padding, for pairs taken in `order`,
    `batch_size` pairs per batch (each batch as wide as its longest of 2B rows)."""
    real = padded = 0
    for start in range(0, len(order), batch_size):
        batch = [pairs[i] for i in order[start:start + batch_size]]
        lengths = [len(p.prompt_ids) + len(r) for p in batch for r in (p.chosen_ids, p.rejected_ids)]
        real += sum(lengths)
        padded += max(lengths) * len(lengths)
    return 1.0 - real / padded if padded else 0.0


def pair_length(pair: TokenizedPair) -> int:
    """The width a pair's rows need: its longer sequence (prompt + chosen or prompt + rejected)."""
    return len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids))


def full_logits_logps(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor,
                      response_mask: Tensor) -> tuple[Tensor, Tensor]:
    """`sequence_logps` through the model's own forward: [N, T, vocab] logits at every position.

    Shapes as `sequence_logps`. Kept for models whose head `sequence_logps` cannot take apart, and
    as the plain computation the fast path is tested and benchmarked against.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    labels = input_ids[:, 1:]
    mask = response_mask[:, 1:].bool()
    token_logps = -F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels, reduction="none")
    # where, not multiply: padding positions may hold any value and must not leak (0 * inf = nan).
    return torch.where(mask, token_logps, 0.0).sum(-1), mask.sum(-1)


class _HeadLogps(torch.autograd.Function):
    """log softmax(hidden @ weight.T)[target] per position, `chunk` positions at a time.

    hidden [N, H], weight [V, H], targets [N] -> [N] float32. Logits are computed in `dtype` (the
    model forward's autocast dtype, as its own head would) and reduced in float32. Backward
    (d logp / d logits = onehot - softmax) needs the logits again: with a trainable weight they are
    recomputed chunk by chunk; with a frozen one (LoRA) d logp / d hidden [N, H] is computed in the
    forward instead, so no chunk is computed twice.
    """

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, targets: Tensor, dtype: torch.dtype, chunk: int,
                hidden_grad_now: bool) -> Tensor:
        w = weight.to(dtype)
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        d_hidden = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if hidden_grad_now else None
        for start in range(0, hidden.shape[0], chunk):
            h, t = hidden[start:start + chunk].to(dtype), targets[start:start + chunk]
            logits = (h @ w.T).float()
            lse = torch.logsumexp(logits, -1)
            out[start:start + chunk] = logits.gather(1, t[:, None])[:, 0] - lse
            if d_hidden is not None:
                d_logits = _onehot_minus_softmax(logits, lse, t)
                d_hidden[start:start + chunk] = (d_logits.to(dtype) @ w).float()
        ctx.dtype, ctx.chunk, ctx.hidden_dtype = dtype, chunk, hidden.dtype
        ctx.save_for_backward(d_hidden if d_hidden is not None else hidden, weight, targets)
        ctx.precomputed = d_hidden is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        saved, weight, targets = ctx.saved_tensors
        if ctx.precomputed:
            return (grad[:, None] * saved).to(ctx.hidden_dtype), None, None, None, None, None
        hidden, dtype = saved, ctx.dtype
        w = weight.to(dtype)
        d_hidden = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device)
        d_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for start in range(0, hidden.shape[0], ctx.chunk):
            h, t = hidden[start:start + ctx.chunk].to(dtype), targets[start:start + ctx.chunk]
            logits = (h @ w.T).float()
            d_logits = (grad[start:start + ctx.chunk, None] * _onehot_minus_softmax(logits, torch.logsumexp(logits, -1),
                                                                                     t)).to(dtype)
            d_hidden[start:start + ctx.chunk] = d_logits @ w
            d_weight += (d_logits.T @ h).float()
        return (d_hidden if ctx.needs_input_grad[0] else None, d_weight.to(weight.dtype) if ctx.needs_input_grad[1]
                else None, None, None, None, None)


def _onehot_minus_softmax(logits: Tensor, lse: Tensor, targets: Tensor) -> Tensor:
    """d log softmax(logits)[target] / d logits: [n, V] float32."""
    d = -torch.exp(logits - lse[:, None])
    d[torch.arange(len(targets), device=d.device), targets] += 1.0
    return d


def _causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face causal LM inside distributed and PEFT wrappers."""
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _plain_head(lm: torch.nn.Module) -> bool:
    """True when the logits are exactly hidden @ lm_head.weight.T and the forward can skip the head."""
    head = lm.get_output_embeddings()
    config = lm.config.get_text_config()
    return (head is not None and getattr(head, "bias", None) is None
            and all(getattr(config, name, None) is None for name in _HEAD_TRANSFORMS)
            and "logits_to_keep" in inspect.signature(lm.forward).parameters)


def sequence_logps(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor,
                   response_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Summed log-probs of the response tokens, one forward; the LM head only at response positions.

    Shapes: input_ids, attention_mask, response_mask [N, T] -> (logps [N] float32, n_tokens [N] long).
    Token t is scored by the hidden state at t - 1; the head runs in the forward's precision (bf16
    under bf16 autocast) and the log-softmax in float32. The forward goes through `model` itself
    (so DDP, FSDP and PEFT see it), asked for the logits of the last position only; the body's
    hidden states are taken from a hook on it.
    """
    lm = _causal_lm(model)
    if not _plain_head(lm):
        return full_logits_logps(model, input_ids, attention_mask, response_mask)
    seen: dict[str, Any] = {}

    def keep(module: torch.nn.Module, args: Any, output: Any) -> None:
        seen["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state
        device = seen["hidden"].device.type
        seen["dtype"] = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None

    handle = lm.base_model.register_forward_hook(keep)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    mask = response_mask[:, 1:].bool()
    hidden = seen["hidden"][:, :-1][mask]  # [n_response_tokens, H]
    weight = lm.get_output_embeddings().weight
    dtype = seen["dtype"] or weight.dtype
    grad_now = torch.is_grad_enabled() and hidden.requires_grad and not weight.requires_grad
    token_logps = _HeadLogps.apply(hidden, weight, input_ids[:, 1:][mask], dtype, LOGPROB_CHUNK, grad_now)
    rows = mask.nonzero()[:, 0]
    logps = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device).index_add(0, rows, token_logps)
    return logps, mask.sum(-1)
