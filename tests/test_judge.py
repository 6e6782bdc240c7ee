"""The pairwise LLM judge: verdict parsing and the win arithmetic, both orders asked of a tiny causal
LM judge through the transformers generator, and a whole `bdpo run` with chat-template scorers, a
guard and a judge on tiny checkpoints in the real formats (tests/tiny_chat.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from evaluators.generators import build_generator
from evaluators.judge import (DEFAULT_TEMPLATE, judge_message, judge_pairs, judge_settings, load_template,
                              pair_score, parse_verdict)
from harness.cli import main
from harness.config import JudgeConfig, ModelConfig, load_config
from harness.errors import UserError
from harness.io import read_json, read_jsonl
from harness.pipeline import Pipeline
from harness.records import JUDGMENT_FIELDS
from tests.tiny_chat import chatml_tokenizer, write_causal_llama, write_llama_guard_like, write_skywork_like

PROMPT = ({"role": "user", "content": "How do I boil an egg?"},)


def test_parse_verdict() -> None:
    assert [parse_verdict(t) for t in ["A", " B.", "**A**", "Tie", "tie\nboth fine", "a", "AA", "", "C", "Answer: A"]] \
        == ["A", "B", "A", "tie", "tie", "A", "invalid", "invalid", "invalid", "invalid"]


@pytest.mark.parametrize("first,second,score", [
    ("A", "B", 1.0),        # the unit's reply picked in both orders: a win
    ("B", "A", 0.0),        # the baseline's in both: a loss
    ("A", "A", 0.5),        # always the first position: the bias cancels, a tie
    ("B", "B", 0.5),
    ("tie", "tie", 0.5),
    ("A", "tie", 0.75),     # one win, one tie
    ("invalid", "A", 0.25),  # no answer counts as a tie; the baseline picked once
])
def test_pair_score(first: str, second: str, score: float) -> None:
    assert pair_score(first, second) == score


def test_template_fields_are_checked(tmp_path: Path) -> None:
    text = load_template(DEFAULT_TEMPLATE)
    message = judge_message(text, PROMPT, "first {reply}", "second")
    assert "User: How do I boil an egg?" in message and "[Reply A]\nfirst {reply}\n\n[Reply B]\nsecond" in message
    bad = tmp_path / "t.txt"
    bad.write_text("{conversation} {response_a} {answer}")
    with pytest.raises(UserError, match=r"missing \['response_b'\], unknown \['answer'\]"):
        load_template(bad)
    with pytest.raises(UserError, match="does not exist"):
        load_template(tmp_path / "absent.txt")


def write_first_position_judge(folder: Path) -> None:
    """A judge that answers "A" whatever it is shown: a constant bias in the last MLP makes one hidden
    direction dominate, and only the "A" row of the LM head reads it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = chatml_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, mlp_bias=True,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.model.layers[-1].mlp.down_proj.bias.zero_()
        model.model.layers[-1].mlp.down_proj.bias[0] = 1000.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[tok.convert_tokens_to_ids("A"), 0] = 1.0
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def greedy_text(model, tok, text: str, n: int) -> str:
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            out.append(nxt)
            if nxt == tok.eos_token_id:
                break
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return tok.decode(out, skip_special_tokens=True)


def test_both_orders_are_asked(tmp_path: Path) -> None:
    tok = chatml_tokenizer()
    model = write_causal_llama(tmp_path / "judge", tok, seed=3)
    config = JudgeConfig(path=str(tmp_path / "judge"), generator="transformers", max_new_tokens=3, batch_size=3)
    generator = build_generator(config.path, ModelConfig(path=config.path), judge_settings(config))
    template = load_template(DEFAULT_TEMPLATE)
    ours, theirs = ["Put it in boiling water.", "Why?"], ["I cannot help with that.", "Because."]
    rows = judge_pairs(generator, template, judge_settings(config), [PROMPT, PROMPT], ours, theirs)
    generator.close()
    for row, a, b in zip(rows, ours, theirs):
        first = f"<|im_start|>user\n{judge_message(template, PROMPT, a, b)}<|im_end|>\n<|im_start|>assistant\n"
        second = f"<|im_start|>user\n{judge_message(template, PROMPT, b, a)}<|im_end|>\n<|im_start|>assistant\n"
        assert row["output_unit_first"] == greedy_text(model, tok, first, 3)
        assert row["output_baseline_first"] == greedy_text(model, tok, second, 3)
        assert row["verdict_unit_first"] == parse_verdict(row["output_unit_first"])
        assert row["score"] == pair_score(row["verdict_unit_first"], row["verdict_baseline_first"])


def test_a_position_biased_judge_gives_ties(tmp_path: Path) -> None:
    write_first_position_judge(tmp_path / "judge")
    config = JudgeConfig(path=str(tmp_path / "judge"), generator="transformers", max_new_tokens=1)
    generator = build_generator(config.path, ModelConfig(path=config.path), judge_settings(config))
    rows = judge_pairs(generator, load_template(DEFAULT_TEMPLATE), judge_settings(config), [PROMPT] * 2,
                       ["Put it in boiling water.", "x"], ["No.", "y"])
    generator.close()
    assert [(r["verdict_unit_first"], r["verdict_baseline_first"], r["score"]) for r in rows] == [("A", "A", 0.5)] * 2


# --------------------------------------------------------------------------------------------
# A whole run: chat-classifier reward, guard cost with categories, the judge, the report
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def judged_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("judged")
    write_causal_llama(root / "policy", chatml_tokenizer())
    write_skywork_like(root / "rm")
    write_llama_guard_like(root / "guard")
    write_first_position_judge(root / "judge")
    config = {
        "experiment": "judged", "run_root": str(root / "runs"), "seeds": [0, 1],
        "model": {"path": str(root / "policy")},
        "data": {"sources": [{"format": "builtin-safety"}], "eval_prompts": 4},
        "train": {"max_steps": 2, "batch_size": 2, "max_length": 96, "max_prompt_length": 48},
        "variants": [{"name": "dpo", "loss": "dpo"}, {"name": "bdpo", "loss": "bdpo"},
                     {"name": "ipo", "loss": "ipo", "seeds": [1, 2]}],
        "generate": {"generator": "transformers", "max_new_tokens": 6},
        "scorers": [{"name": "reward", "type": "chat-classifier", "path": str(root / "rm")},
                    {"name": "harm", "type": "guard", "path": str(root / "guard"), "score_type": "cost",
                     "options": {"categories": True, "category_tokens": 4}}],
        "judge": {"path": str(root / "judge"), "generator": "transformers", "max_new_tokens": 1},
        "report": {"baseline": "dpo", "bootstrap_samples": 200},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", str(root / "run.yaml"), "--no-progress"]) == 0
    return root


@pytest.mark.slow
def test_run_with_judge_reports_its_win_rate(judged_run: Path) -> None:
    run = judged_run / "runs" / "judged"
    stages = [name for name, _ in Pipeline(load_config(judged_run / "run.yaml")).execute(dry_run=True)]
    judged = sorted(s for s in stages if s.startswith("judge/"))
    # Every unit with a baseline partner of its seed (ipo-seed2 has none), and the reference; not the baseline.
    assert judged == ["judge/bdpo-seed0", "judge/bdpo-seed1", "judge/ipo-seed1", "judge/reference"]
    rows = read_jsonl(run / "judgments" / "bdpo-seed1.jsonl")
    assert len(rows) == 4 and all(set(r) == set(JUDGMENT_FIELDS) for r in rows)
    assert {r["baseline_unit"] for r in rows} == {"dpo-seed1"}
    assert read_jsonl(run / "judgments" / "reference.jsonl")[0]["baseline_unit"] == "dpo-seed0"
    results = read_json(run / "results.json")
    board = {row["variant"]: row["metrics"] for row in results["leaderboard"]}
    # The judge always answers "A": every pair is a tie, so every win rate is exactly 1/2.
    for variant in ("bdpo", "ipo", "reference"):
        entry = board[variant]["judge.win_vs_baseline"]
        assert (entry["value"], entry["ci_low"], entry["ci_high"], entry["ties"]) == (0.5, 0.5, 0.5, 1.0)
    assert board["bdpo"]["judge.win_vs_baseline"]["n_seeds"] == 2 and board["ipo"]["judge.win_vs_baseline"]["n_seeds"] == 1
    assert board["dpo"]["judge.win_vs_baseline"] is None
    assert "judge.win_vs_baseline" in results["metric_definitions"] and "judgments/bdpo-seed0.jsonl" in results["inputs"]
    assert "judge win vs dpo" in (run / "report" / "leaderboard.md").read_text()
    # The guard's categories are in its score rows; the reward is a chat-classifier score.
    harm = read_jsonl(run / "scores" / "bdpo-seed0.harm.jsonl")
    assert {"guard_output", "category"} <= set(harm[0]) and np.isfinite([r["score"] for r in harm]).all()


@pytest.mark.slow
def test_judge_win_rate_arithmetic_from_the_rows(judged_run: Path, tmp_path: Path) -> None:
    """Rewrite one unit's verdicts by hand; the report's win rate is the mean pair score over its
    seeds' prompts, with ties counted as halves."""
    import shutil

    run = tmp_path / "judged"
    shutil.copytree(judged_run / "runs" / "judged", run)
    verdicts = {0: [("A", "B"), ("B", "A"), ("A", "A"), ("tie", "B")], 1: [("A", "B")] * 4}
    for seed, pairs in verdicts.items():
        path = run / "judgments" / f"bdpo-seed{seed}.jsonl"
        rows = read_jsonl(path)
        for row, (v1, v2) in zip(rows, pairs):
            row.update(verdict_unit_first=v1, verdict_baseline_first=v2, score=pair_score(v1, v2))
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["report", str(run)]) == 0
    entry = {r["variant"]: r["metrics"] for r in read_json(run / "results.json")["leaderboard"]}["bdpo"]
    entry = entry["judge.win_vs_baseline"]
    assert entry["value"] == pytest.approx(((1 + 0 + 0.5 + 0.75) / 4 + 1.0) / 2)
    assert entry["ties"] == pytest.approx(1 / 8) and entry["n_pairs"] == 8
    assert entry["ci_low"] < entry["value"] < entry["ci_high"]
    # A judgments file that lacks a prompt is refused with its name.
    path = run / "judgments" / "bdpo-seed0.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[1:]))
    assert main(["report", str(run)]) == 2


def test_the_documented_prompt_is_the_template() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "scoring.md").read_text()
    shown = doc.split("```text\n", 1)[1].split("```", 1)[0]
    assert shown == DEFAULT_TEMPLATE.read_text()
