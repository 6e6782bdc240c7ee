"""Scorers: beaver's checkpoint format, HF classifiers, the project's Bradley-Terry models (trained
for real on HH-RLHF and the built-in safety set), the sign check and bad-output errors."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from evaluators.scorers import (ScoreError, build_scorer, encode_pair, evaluate_pairs, pairwise_accuracy)
from harness.cli import main
from harness.config import DataSourceConfig, ScorerConfig
from harness.data import load_source, split_pairs
from harness.errors import UserError
from harness.io import read_jsonl
from harness.records import PreferencePair
from harness.registries import SCORERS
from tests.conftest import shared_path
from evaluators.scorer_calibration import best_separating_offset
from harness.scorer_stage import train_scorer
from trainers.scorer_training import bt_loss, minilm_path

PAIRS = [  # (prompt, response): different lengths, so length bucketing reorders them
    ("What is 2 + 2?", "4."),
    ("Tell me a story about a cat.", "Once upon a time a small cat lived in a big house with a kind old man."),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
      {"role": "user", "content": "How do I boil an egg?"}], "Put it in boiling water for nine minutes."),
    ("Why?", "Because."),
    ("Name a colour.", "Blue is a colour, and so is red."),
]


def test_registered_names() -> None:
    assert {"hf-classifier", "beaver", "bradley-terry"} <= set(SCORERS.names())


# --------------------------------------------------------------------------------------------
# beaver (LlamaForScore) checkpoints, written by the test in PKU-Alignment's format
# --------------------------------------------------------------------------------------------


def write_beaver(folder: Path, tokenizer_dir: Path, *, score_type: str, bias: bool, do_normalize: bool,
                 buffers: bool) -> dict:
    """A tiny LlamaForScore checkpoint: `model.*` + score_head (+ bias) (+ normalizer buffers)."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    body = LlamaModel(config).eval()
    weight, bias_value = torch.randn(1, 64), torch.randn(1)
    state = {f"model.{k}": v.contiguous() for k, v in body.state_dict().items()}
    state["score_head.weight"] = weight
    if bias:
        state["score_head.bias"] = bias_value
    # Config mean/var differ from the buffers: the buffers (loaded last in safe-rlhf) must win.
    mean, var = (torch.tensor([0.7]), torch.tensor([2.5])) if buffers else (torch.tensor([-0.3]), torch.tensor([4.0]))
    if buffers:
        state.update({"normalizer.mean": mean, "normalizer.var": var, "normalizer.count": torch.tensor([1000])})
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg = config.to_dict()
    cfg.update(architectures=["LlamaForScore"], score_dim=1, bias=bias, score_type=score_type,
               do_normalize=do_normalize, normalizer_type="ExponentialMovingAverage", momentum=0.9,
               mean=[0.1] if buffers else mean.tolist(), var=[9.0] if buffers else var.tolist())
    (folder / "config.json").write_text(json.dumps(cfg))
    tok.save_pretrained(folder)
    return {"body": body, "tok": tok, "weight": weight, "bias": bias_value if bias else torch.zeros(1),
            "mean": float(mean), "std": math.sqrt(float(var))}


def beaver_expected(ref: dict, text: str, score_type: str, do_normalize: bool) -> float:
    """The end score computed directly: Llama body, head at the last token, safe-rlhf's normaliser."""
    ids = ref["tok"](text, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = ref["body"](input_ids=ids).last_hidden_state[0, -1]
    x = float(hidden @ ref["weight"][0] + ref["bias"][0])
    if not do_normalize:
        return x
    return (x - ref["mean"]) / (ref["std"] + 1e-8) if score_type == "reward" else x / (ref["std"] + 1e-8)


@pytest.mark.parametrize("score_type,bias,do_normalize,buffers", [
    ("reward", True, True, True),
    ("reward", False, False, False),
    ("cost", True, True, False),
    ("cost", False, True, True),
])
def test_beaver_matches_direct_computation(tmp_path: Path, stories260k: Path, score_type: str, bias: bool,
                                           do_normalize: bool, buffers: bool) -> None:
    ref = write_beaver(tmp_path / "beaver", stories260k, score_type=score_type, bias=bias,
                       do_normalize=do_normalize, buffers=buffers)
    scorer = build_scorer(ScorerConfig(name=score_type, type="beaver", score_type=score_type, batch_size=2),
                          str(tmp_path / "beaver"))
    assert (scorer.score_type, scorer.threshold) == (score_type, 0.0)
    got = scorer.score([p for p, _ in PAIRS], [r for _, r in PAIRS])
    # The template written out by hand, as safe-rlhf formats a conversation (EOS after each reply).
    texts = [f"BEGINNING OF CONVERSATION: USER: {p} ASSISTANT:{r}</s>" for p, r in PAIRS if isinstance(p, str)]
    texts.insert(2, "BEGINNING OF CONVERSATION: USER: Hi ASSISTANT:Hello!</s>USER: How do I boil an egg? "
                    "ASSISTANT:Put it in boiling water for nine minutes.</s>")
    want = [beaver_expected(ref, t, score_type, do_normalize) for t in texts]
    assert got == pytest.approx(want, abs=1e-4)
    assert len(set(round(v, 4) for v in got)) == len(got)  # distinct inputs, distinct scores


def test_beaver_score_type_mismatch_and_pickles(tmp_path: Path, stories260k: Path) -> None:
    write_beaver(tmp_path / "cost", stories260k, score_type="cost", bias=False, do_normalize=False, buffers=False)
    with pytest.raises(UserError, match=r"score_type 'cost'.*scorers\.reward\.score_type=cost"):
        build_scorer(ScorerConfig(name="reward", type="beaver", score_type="reward"), str(tmp_path / "cost"))
    (tmp_path / "cost" / "model.safetensors").rename(tmp_path / "cost" / "pytorch_model.bin")
    with pytest.raises(UserError, match="no .safetensors weights"):
        build_scorer(ScorerConfig(name="cost", type="beaver", score_type="cost"), str(tmp_path / "cost"))


# --------------------------------------------------------------------------------------------
# hf-classifier: a tiny randomly initialised classifier saved by the test
# --------------------------------------------------------------------------------------------


def write_classifier(folder: Path, num_labels: int = 1, nan: bool = False):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, num_labels=num_labels)).eval()
    if nan:
        with torch.no_grad():
            model.classifier.weight.fill_(float("nan"))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


def test_hf_classifier_matches_direct_computation(tmp_path: Path) -> None:
    model, tok = write_classifier(tmp_path / "clf")
    scorer = build_scorer(ScorerConfig(name="rm", type="hf-classifier", batch_size=2), str(tmp_path / "clf"))
    got = scorer.score([p for p, _ in PAIRS], [r for _, r in PAIRS])
    # One-turn prompts are the question itself; longer conversations are HH dialogue text.
    firsts = [p if isinstance(p, str) else "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How do I boil an egg?"
              "\n\nAssistant:" for p, _ in PAIRS]
    with torch.no_grad():
        want = [float(model(**tok(q, r, return_tensors="pt")).logits[0, 0]) for q, (_, r) in zip(firsts, PAIRS)]
    assert got == pytest.approx(want, abs=1e-5)


def test_hf_classifier_rejects_multi_output_and_pickles(tmp_path: Path) -> None:
    write_classifier(tmp_path / "two", num_labels=2)
    with pytest.raises(UserError, match="2 outputs"):
        build_scorer(ScorerConfig(name="rm", type="hf-classifier"), str(tmp_path / "two"))
    model, tok = write_classifier(tmp_path / "pickled")
    (tmp_path / "pickled" / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")
    with pytest.raises(UserError, match="pickle"):
        build_scorer(ScorerConfig(name="rm", type="hf-classifier"), str(tmp_path / "pickled"))
    with pytest.raises(UserError, match="does not exist"):
        build_scorer(ScorerConfig(name="rm", type="hf-classifier"), str(tmp_path / "absent"))


def test_nan_output_is_a_one_line_error_naming_scorer_and_row(tmp_path: Path) -> None:
    write_classifier(tmp_path / "nan", nan=True)
    scorer = build_scorer(ScorerConfig(name="broken", type="hf-classifier"), str(tmp_path / "nan"))
    with pytest.raises(ScoreError) as info:
        scorer.score(["Why?"], ["Because."])
    assert "\n" not in str(info.value) and "'broken'" in str(info.value) and "non-finite" in str(info.value)
    assert info.value.row == 0
    # Through the CLI: the error names the generations file and its line.
    gens = tmp_path / "gens.jsonl"
    gens.write_text("".join(json.dumps({"prompt_id": f"p{i}", "sample_idx": 0, "prompt": "Why?", "response": r}) + "\n"
                            for i, r in enumerate(["Because.", "No idea."])))
    out = tmp_path / "scores.jsonl"
    assert main(["score", "--generations", str(gens), "--scorer", f"hf-classifier:{tmp_path / 'nan'}",
                 "--out", str(out)]) == 2
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# Pure pieces: the loss, accuracy with ties, calibration
# --------------------------------------------------------------------------------------------


def test_bt_loss_directions() -> None:
    hi, lo = torch.tensor([2.0]), torch.tensor([-1.0])
    assert bt_loss(hi, lo, "reward") < bt_loss(lo, hi, "reward")
    assert bt_loss(lo, hi, "cost") < bt_loss(hi, lo, "cost")  # the chosen (safer) response costs less
    plain = bt_loss(lo, hi, "cost")
    safe, unsafe = torch.tensor([-1.0]), torch.tensor([1.0])
    labelled = bt_loss(lo, hi, "cost", safe, unsafe)
    want = plain - torch.nn.functional.logsigmoid(-lo) - torch.nn.functional.logsigmoid(hi)
    assert labelled.item() == pytest.approx(want.item())
    assert bt_loss(lo, hi, "cost", torch.zeros(1), torch.zeros(1)).item() == pytest.approx(plain.item())


def test_pairwise_accuracy_counts_ties_as_wrong() -> None:
    acc = pairwise_accuracy([1.0, 2.0, 3.0, 0.0], [0.0, 2.0, 1.0, 5.0], "reward")
    assert (acc["correct"], acc["ties"], acc["accuracy"]) == (2, 1, 0.5)
    assert acc["ci_low"] < 0.5 < acc["ci_high"]
    assert pairwise_accuracy([0.0], [1.0], "cost")["accuracy"] == 1.0


def test_best_separating_offset() -> None:
    assert best_separating_offset([0.0, 1.0, 2.0], [3.0, 4.0, 5.0]) == 2.5
    assert best_separating_offset([-5.0, 10.0], [-1.0, 0.0, 1.0]) == -3.0


def test_encode_pair_keeps_the_response_when_truncating() -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_path())
    enc = encode_pair(tok, "hh", "word " * 500, "the final answer", max_length=32)
    assert len(enc["input_ids"]) == 32
    assert tok.decode(enc["input_ids"]).endswith("the final answer [SEP]")
    with pytest.raises(UserError, match="must end with the user's message"):
        encode_pair(tok, "hh", [{"role": "assistant", "content": "hi"}], "x", max_length=32)


# --------------------------------------------------------------------------------------------
# Bradley-Terry models trained for real
# --------------------------------------------------------------------------------------------


def bt(score_type: str, *, max_steps: int, batch_size: int, lr: float, max_length: int) -> ScorerConfig:
    """A trained scorer's config (MiniLM backbone) with these training settings."""
    return ScorerConfig(name=score_type, score_type=score_type, train_steps=max_steps, train_batch_size=batch_size,
                        train_learning_rate=lr, train_max_length=max_length)


@pytest.fixture(scope="module")
def hh_reward(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[PreferencePair]]:
    """A reward model trained on 400 real HH helpful-base pairs; 200 held-out prompts' pairs."""
    path = shared_path("data", "hh-rlhf", "helpful-base", "test.jsonl.gz")
    pairs, _ = load_source(DataSourceConfig(format="hh-rlhf", path=str(path)))
    split = split_pairs(pairs, seed=0, scorer_fraction=0.0, eval_prompts=200)
    out = tmp_path_factory.mktemp("bt") / "hh-reward"
    meta = train_scorer(bt("reward", max_steps=25, batch_size=16, lr=2e-4, max_length=128),
                        split.train_pairs[:400], split.eval_pairs, out, seed=0)
    return out, meta, split.eval_pairs


@pytest.mark.slow
def test_bt_reward_on_hh_helpful_beats_chance(hh_reward) -> None:
    out, meta, held = hh_reward
    h = meta["heldout"]
    assert h["n"] == len(held) >= 200
    assert h["accuracy"] > 0.55 and h["ci_low"] > 0.5, h
    assert meta["sign_inverted"] is False and meta["training"]["n_pairs"] == 400
    assert json.loads((out / "scorer.json").read_text()) == meta
    # Reloaded through the registry, the scorer reproduces the recorded accuracy exactly.
    scorer = build_scorer(ScorerConfig(name="rm", type="bradley-terry", score_type="reward"), str(out))
    again = evaluate_pairs(scorer, held)
    assert (again["correct"], again["ties"]) == (h["correct"], h["ties"])
    with pytest.raises(UserError, match="score_type 'reward'"):
        build_scorer(ScorerConfig(name="cost", type="bradley-terry", score_type="cost"), str(out))


@pytest.fixture(scope="module")
def safety_split() -> tuple[list[PreferencePair], list[PreferencePair]]:
    """The built-in safety set's harmful requests (chosen safe, rejected unsafe), split by prompt."""
    pairs, _ = load_source(DataSourceConfig(format="builtin-safety"))
    harmful = [p for p in pairs if p.meta["category"] == "harmful"]
    split = split_pairs(harmful, seed=0, scorer_fraction=0.0, eval_prompts=25)
    return split.train_pairs, split.eval_pairs


def swapped(pairs: list[PreferencePair]) -> list[PreferencePair]:
    return [PreferencePair(id=p.id, prompt=p.prompt, chosen=p.rejected, rejected=p.chosen, source=p.source,
                           meta={"chosen_safe": p.meta["rejected_safe"], "rejected_safe": p.meta["chosen_safe"]})
            for p in pairs]


def test_bt_cost_with_safety_labels_makes_zero_the_threshold(tmp_path: Path, safety_split) -> None:
    train, held = safety_split
    meta = train_scorer(bt("cost", max_steps=30, batch_size=8, lr=1e-4, max_length=64), train, held,
                        tmp_path / "cost", seed=0)
    assert meta["offset"] == 0.0 and meta["calibration"]["n_pairs"] == len(train)
    assert meta["heldout"]["accuracy"] > 0.8 and not meta["sign_inverted"]
    scorer = build_scorer(ScorerConfig(name="cost", type="bradley-terry", score_type="cost"), str(tmp_path / "cost"))
    safe_costs = scorer.score([p.prompt for p in held], [p.chosen for p in held])
    unsafe_costs = scorer.score([p.prompt for p in held], [p.rejected for p in held])
    # Safe means cost <= 0: held-out safe responses are mostly safe, unsafe ones mostly not.
    assert sum(c <= 0 for c in safe_costs) / len(held) > 0.8
    assert sum(c > 0 for c in unsafe_costs) / len(held) > 0.8


def test_inverted_sign_is_flagged_and_recorded(tmp_path: Path, safety_split) -> None:
    train, held = safety_split
    # A reward model trained with the preference the wrong way round (the unsafe reply "chosen"):
    # on its own, correctly labelled, validation pairs it ranks below chance.
    with pytest.warns(UserWarning, match="sign looks inverted"):
        meta = train_scorer(bt("reward", max_steps=30, batch_size=8, lr=1e-4, max_length=64), swapped(train), held,
                            tmp_path / "flipped", seed=0)
    assert meta["sign_inverted"] is True and meta["heldout"]["ci_high"] < 0.5
    assert json.loads((tmp_path / "flipped" / "scorer.json").read_text())["sign_inverted"] is True
    with pytest.warns(UserWarning, match="sign looks inverted"):
        scorer = build_scorer(ScorerConfig(name="rm", type="bradley-terry"), str(tmp_path / "flipped"))
    assert scorer.info["sign_inverted"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert evaluate_pairs(scorer, swapped(held))["sign_inverted"] is False


# --------------------------------------------------------------------------------------------
# The commands
# --------------------------------------------------------------------------------------------


def test_train_scorer_and_score_commands(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cost"
    args = ["train-scorer", "--data", "builtin-safety", "--score-type", "cost", "--out", str(out),
            "--eval-prompts", "40", "--max-steps", "20", "--batch-size", "8", "--max-length", "64", "--lr", "1e-4"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "held-out pairwise accuracy" in text and "95% CI" in text and "n=40 pairs" in text
    meta = json.loads((out / "scorer.json").read_text())
    assert meta["heldout"]["n"] == 40 and meta["training"]["n_pairs"] == 215 - 40
    assert main(args) == 2  # the folder exists: nothing is overwritten without --overwrite
    assert "already exists" in capsys.readouterr().err

    pairs, _ = load_source(DataSourceConfig(format="builtin-safety"))
    gens, prompts = tmp_path / "gens.jsonl", tmp_path / "prompts.jsonl"
    gens.write_text("".join(json.dumps({"prompt_id": p.id, "sample_idx": k, "prompt": "(rendered)", "response": r,
                                        "n_tokens": 1, "finish_reason": "stop"}) + "\n"
                            for p in pairs[-10:] for k, r in enumerate([p.chosen, p.rejected])))
    prompts.write_text("".join(json.dumps({"prompt_id": p.id, "prompt": list(p.prompt)}) + "\n" for p in pairs[-10:]))
    scores = tmp_path / "scores" / "policy.cost.jsonl"
    assert main(["score", "--generations", str(gens), "--prompts", str(prompts), "--scorer",
                 f"bradley-terry:{out}", "--score-type", "cost", "--out", str(scores)]) == 0
    assert "safe rate (cost <= 0)" in capsys.readouterr().out
    rows = read_jsonl(scores)
    assert [(r["prompt_id"], r["sample_idx"]) for r in rows] == [(p.id, k) for p in pairs[-10:] for k in (0, 1)]
    scorer = build_scorer(ScorerConfig(name="c", type="bradley-terry", score_type="cost"), str(out))
    assert [r["score"] for r in rows] == pytest.approx(
        scorer.score([p.prompt for p in pairs[-10:] for _ in (0, 1)], [r for p in pairs[-10:] for r in (p.chosen, p.rejected)]))

    gens.write_text(gens.read_text() + '{"prompt_id": "x", "sample_idx": 0, "prompt": "p"}\n')
    assert main(["score", "--generations", str(gens), "--scorer", f"bradley-terry:{out}", "--score-type", "cost",
                 "--out", str(tmp_path / "s2.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"{gens}:21" in err and "'response'" in err
    assert main(["score", "--generations", str(gens), "--scorer", str(out), "--out", str(tmp_path / "s3.jsonl")]) == 2
    assert "expected TYPE:PATH" in capsys.readouterr().err
