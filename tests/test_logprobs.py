"""Tokenisation of preference pairs and sequence log-probs, on the real tiny Llama (stories260k)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness.data import render_prompt, render_response
from harness.records import PreferencePair
from trainers.logprobs import collate, sequence_logps, tokenization_hash, tokenize_pairs

pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture
def tokenizer(stories260k):
    return AutoTokenizer.from_pretrained(stories260k)


def pair(i: int, prompt: str, chosen: str, rejected: str) -> PreferencePair:
    return PreferencePair(id=f"t:{i}", prompt=({"role": "user", "content": prompt},), chosen=chosen, rejected=rejected)


PAIRS = [
    pair(0, "Tell me a story about a cat.", "Once upon a time there was a cat named Tom.", "No."),
    pair(1, "What did the little girl find?", "She found a shiny red ball in the park.", "A ball."),
    pair(2, "Who helped Ben?", "His mom helped him tie his shoes.", "Nobody helped Ben at all, he was sad."),
]


def test_plain_text_ids_are_exactly_the_rendered_texts(tokenizer):
    tokenized, stats = tokenize_pairs(PAIRS, tokenizer, use_chat_template=True, max_length=128, max_prompt_length=64)
    assert not stats.chat_template  # stories260k has none: HH's plain form
    for p, t in zip(PAIRS, tokenized):
        prompt_text = render_prompt(p.prompt, tokenizer, True)
        assert list(t.prompt_ids) == tokenizer(prompt_text)["input_ids"]
        assert t.prompt_ids[0] == tokenizer.bos_token_id
        for reply, ids in ((p.chosen, t.chosen_ids), (p.rejected, t.rejected_ids)):
            full = tokenizer(prompt_text + render_response(reply, tokenizer, True))["input_ids"]
            assert list(t.prompt_ids + ids) == full
            assert ids[-1] == tokenizer.eos_token_id
    assert (stats.prompt_truncated, stats.chosen_truncated, stats.boundary_merged) == (0, 0, 0)


def test_truncation_keeps_bos_and_the_end_of_the_prompt_and_is_counted(tokenizer):
    long = pair(9, "The sun was hot. " * 20 + "What did Lily do?", "She swam in the cold blue lake all day long. " * 3,
                "Nothing.")
    (t,), stats = tokenize_pairs([long], tokenizer, use_chat_template=False, max_length=48, max_prompt_length=32)
    full_prompt = tokenizer(render_prompt(long.prompt, tokenizer, False))["input_ids"]
    assert len(t.prompt_ids) == 32
    assert t.prompt_ids[0] == tokenizer.bos_token_id
    assert list(t.prompt_ids[1:]) == full_prompt[-31:]
    assert len(t.chosen_ids) == 48 - 32  # cut from the right to fit max_length
    assert t.rejected_ids[-1] == tokenizer.eos_token_id  # short reply: untouched
    assert (stats.prompt_truncated, stats.chosen_truncated, stats.rejected_truncated) == (1, 1, 0)
    assert "max_length=48" in stats.summary()


def test_chat_template_boundary_merge_is_detected_and_the_sequence_stays_exact(tokenizer):
    # A template that writes the reply straight after the user's text, so "ti" + "me" merges into "time".
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    merged = pair(0, "Once upon a ti", "me there was a dog.", "me there was a cat.")
    (t,), stats = tokenize_pairs([merged], tokenizer, use_chat_template=True, max_length=64, max_prompt_length=32)
    assert stats.chat_template and stats.boundary_merged == 2
    prompt_text = render_prompt(merged.prompt, tokenizer, True)
    for reply, ids in ((merged.chosen, t.chosen_ids), (merged.rejected, t.rejected_ids)):
        full = tokenizer(prompt_text + render_response(reply, tokenizer, True), add_special_tokens=False)["input_ids"]
        assert list(t.prompt_ids + ids) == full  # no BOS added twice, nothing lost at the boundary
    assert tokenizer.convert_ids_to_tokens(t.chosen_ids[0]) == "▁time"


def test_tokenization_hash_changes_with_data_and_truncation(tokenizer):
    base, _ = tokenize_pairs(PAIRS, tokenizer, use_chat_template=False, max_length=128, max_prompt_length=64)
    again, _ = tokenize_pairs(PAIRS, tokenizer, use_chat_template=False, max_length=128, max_prompt_length=64)
    shorter, _ = tokenize_pairs(PAIRS, tokenizer, use_chat_template=False, max_length=16, max_prompt_length=8)
    edited = [PAIRS[0], pair(1, "What did the little girl find?", "A shiny blue ball.", "A ball."), PAIRS[2]]
    changed, _ = tokenize_pairs(edited, tokenizer, use_chat_template=False, max_length=128, max_prompt_length=64)
    hashes = {tokenization_hash(x) for x in (base, shorter, changed)}
    assert tokenization_hash(again) == tokenization_hash(base) and len(hashes) == 3


def test_batched_sequence_logps_equal_a_token_by_token_computation(stories260k, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(stories260k, dtype=torch.float32).eval()
    tokenized, _ = tokenize_pairs(PAIRS, tokenizer, use_chat_template=False, max_length=64, max_prompt_length=32)
    batch = collate(tokenized, pad_token_id=tokenizer.pad_token_id)
    # Layout: chosen rows first, right padding, response mask on the response tokens only.
    assert batch["input_ids"].shape[0] == 2 * len(PAIRS)
    assert batch["response_mask"].sum(1).tolist() == [len(t.chosen_ids) for t in tokenized] + [
        len(t.rejected_ids) for t in tokenized]
    with torch.no_grad():
        logps, n_tokens = sequence_logps(model, **batch)

    def direct(prompt: tuple[int, ...], response: tuple[int, ...]) -> float:
        """Sum over response tokens of log p(token | everything before it), one prefix at a time."""
        ids = list(prompt + response)
        total = 0.0
        for t in range(len(prompt), len(ids)):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1]
            total += torch.log_softmax(logits.double(), -1)[ids[t]].item()
        return total

    expected = [direct(t.prompt_ids, t.chosen_ids) for t in tokenized] + [
        direct(t.prompt_ids, t.rejected_ids) for t in tokenized]
    assert torch.allclose(logps.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-4)
    assert n_tokens.tolist() == batch["response_mask"].sum(1).tolist()


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("bf16", [False, True])
def test_response_position_head_equals_full_logits_with_gradients(stories260k, tokenizer, lora, bf16, monkeypatch):
    """The fast path (LM head at response positions, in chunks) against full [N, T, vocab] logits:
    same log-probs and same parameter gradients, trainable head (full fine-tuning) and frozen head (LoRA)."""
    import trainers.logprobs as logprobs
    from trainers.logprobs import full_logits_logps

    monkeypatch.setattr(logprobs, "LOGPROB_CHUNK", 7)  # several chunks, the last one partial
    tokenized, _ = tokenize_pairs(PAIRS, tokenizer, use_chat_template=False, max_length=64, max_prompt_length=32)
    batch = collate(tokenized, pad_token_id=tokenizer.pad_token_id)
    results = []
    for fn in (sequence_logps, full_logits_logps):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(stories260k, dtype=torch.float32)
        if lora:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                     init_lora_weights=False))
        assert logprobs._plain_head(logprobs._causal_lm(model))  # stories260k takes the fast path
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logps, n = fn(model, **batch)
        weights = torch.arange(1, len(logps) + 1, dtype=torch.float32)  # a loss that weighs every row differently
        (weights * logps).sum().backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
        results.append((logps.detach(), n, grads))
    (fast, n_fast, g_fast), (full, n_full, g_full) = results
    assert torch.equal(n_fast, n_full)
    tol = dict(rtol=2e-2, atol=5e-2) if bf16 else dict(rtol=1e-5, atol=1e-4)
    assert torch.allclose(fast, full, **tol)
    assert g_fast.keys() == g_full.keys() and len(g_fast) > 0
    for name in g_full:
        err = torch.linalg.norm(g_fast[name] - g_full[name]) / torch.linalg.norm(g_full[name])
        assert err <= (2e-2 if bf16 else 1e-5), (name, float(err))


def test_padded_share_counts_the_padding_of_each_batch(tokenizer):
    from trainers.logprobs import pair_length, padded_share

    tokenized, _ = tokenize_pairs(PAIRS, tokenizer, use_chat_template=False, max_length=64, max_prompt_length=32)
    batch = collate(tokenized, pad_token_id=tokenizer.pad_token_id)
    expected = 1 - batch["attention_mask"].float().mean().item()
    assert padded_share(tokenized, [0, 1, 2], 3) == pytest.approx(expected)
    assert padded_share(tokenized, [0, 1, 2], 1) == pytest.approx(
        1 - sum(len(t.prompt_ids) * 2 + len(t.chosen_ids) + len(t.rejected_ids) for t in tokenized)
        / sum(2 * pair_length(t) for t in tokenized))
