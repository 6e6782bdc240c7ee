"""A pairwise LLM judge: a unit's completions against the baseline's, on the same prompt and sample.

The judge model runs through the project's generators (`build_generator`: vLLM where it can run the
model, else transformers), greedily. Each pair is asked in both orders, the unit's reply first
(as "A") and then the baseline's first, so a judge that prefers a position gains nothing from it:

    order score: 1 when the judge picks the unit's reply, 0 when it picks the baseline's, 1/2 for
                 "tie" and for an answer that is none of A, B, tie ("invalid", counted and recorded);
    pair score:  the mean of the two order scores (1 win, 0 loss, 1/2 tie, 1/4 or 3/4 half-decided).

A position-biased judge that always answers "A" therefore gives every pair 1/2 (a tie). The win
rate is the mean pair score (ties 1/2), as the scorers' `win_vs_baseline` counts ties. The prompt
is a template file (default `evaluators/templates/judge_pairwise.txt`, shown in docs/scoring.md)
with the fields {conversation}, {response_a} and {response_b}; it is sent as one user message
through the judge's chat template.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any, Sequence

from harness.config import GenerateConfig, JudgeConfig, ModelConfig, to_dict
from harness.data import render_prompt
from harness.errors import UserError
from harness.io import sha256_json
from harness.models import model_hash
from harness.records import Message

DEFAULT_TEMPLATE = Path(__file__).parent / "templates" / "judge_pairwise.txt"
TEMPLATE_FIELDS = ("conversation", "response_a", "response_b")
VERDICTS = ("A", "B", "tie", "invalid")


def template_path(config: JudgeConfig) -> Path:
    return Path(config.template) if config.template else DEFAULT_TEMPLATE


def load_template(path: Path) -> str:
    """The template text; a UserError when a field is missing or unknown."""
    if not path.is_file():
        raise UserError(f"judge.template: {path} does not exist. Point it at a text file with the fields "
                        f"{{{'}, {'.join(TEMPLATE_FIELDS)}}}, or leave it empty for the built-in prompt.")
    text = path.read_text(encoding="utf-8")
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as e:
        raise UserError(f"{path}: not a valid template ({e}); write literal braces as {{{{ and }}}}.") from None
    missing, unknown = sorted(set(TEMPLATE_FIELDS) - fields), sorted(fields - set(TEMPLATE_FIELDS))
    if missing or unknown:
        raise UserError(f"{path}: the judge template needs the fields {list(TEMPLATE_FIELDS)}; "
                        f"missing {missing}, unknown {unknown} (write literal braces as {{{{ and }}}}).")
    return text


def render_conversation(prompt: Sequence[Message]) -> str:
    """'User: ...' / 'Assistant: ...' turns separated by blank lines (system text as 'System: ...')."""
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)


def judge_message(template: str, prompt: Sequence[Message], response_a: str, response_b: str) -> str:
    return template.format(conversation=render_conversation(prompt), response_a=response_a, response_b=response_b)


def parse_verdict(text: str) -> str:
    """'A', 'B' or 'tie' from the first word of the judge's answer (case and punctuation ignored,
    e.g. '**A**.' or 'Tie'); 'invalid' for anything else."""
    match = re.match(r"\W*([A-Za-z]+)", text)
    word = match.group(1).lower() if match else ""
    return {"a": "A", "b": "B", "tie": "tie"}.get(word, "invalid")


def order_score(verdict: str, unit_position: str) -> float:
    """1 when the verdict names the unit's position, 0 the other position, 1/2 for tie or invalid."""
    if verdict in ("A", "B"):
        return 1.0 if verdict == unit_position else 0.0
    return 0.5


def pair_score(verdict_unit_first: str, verdict_baseline_first: str) -> float:
    """The unit's score over both orders: mean of its order scores (it is A first, then B)."""
    return (order_score(verdict_unit_first, "A") + order_score(verdict_baseline_first, "B")) / 2


def check_judge_path(config: JudgeConfig) -> None:
    if not Path(config.path).is_dir():
        raise UserError(f"judge.path: model folder '{config.path}' does not exist. Point it at a local "
                        "instruction-tuned causal LM folder.")


def judge_inputs(config: JudgeConfig) -> dict[str, Any]:
    """What a judgment depends on, for the stage fingerprint: the settings that change the answers,
    the model's hash and the prompt's text (a changed wording rejudges). A missing model folder or a
    bad template is a UserError here, before any stage runs."""
    check_judge_path(config)
    template = load_template(template_path(config))
    settings = {k: v for k, v in to_dict(config).items() if k not in ("generator", "batch_size", "tensor_parallel_size")}
    return {"config": settings, "model": model_hash(config.path), "template": sha256_json(template)}


def judge_settings(config: JudgeConfig) -> GenerateConfig:
    """Greedy, one answer per prompt, at most max_new_tokens tokens."""
    return GenerateConfig(generator=config.generator, n=1, temperature=0.0, max_new_tokens=config.max_new_tokens,
                          batch_size=config.batch_size, tensor_parallel_size=config.tensor_parallel_size)


def build_judge(config: JudgeConfig, console: Any = None) -> Any:
    """The judge model as a generator (vLLM where it can run it, else transformers, for 'auto')."""
    from evaluators.generators import build_generator

    check_judge_path(config)
    return build_generator(config.path, ModelConfig(path=config.path, dtype=config.dtype), judge_settings(config),
                           console=console)


def judge_pairs(generator: Any, template: str, settings: GenerateConfig, prompts: Sequence[Sequence[Message]],
                unit_responses: Sequence[str], baseline_responses: Sequence[str]) -> list[dict[str, Any]]:
    """Judge each (prompt, unit reply, baseline reply) in both orders; one dict per pair with both
    verdicts, both raw answers and the pair score (see the module docstring)."""
    messages = []
    for prompt, ours, theirs in zip(prompts, unit_responses, baseline_responses):
        messages += [judge_message(template, prompt, ours, theirs), judge_message(template, prompt, theirs, ours)]
    rendered = [render_prompt([{"role": "user", "content": m}], generator.tokenizer, generator.use_chat_template)
                for m in messages]
    answers = [c[0].text for c in generator.generate(rendered, settings)]
    rows = []
    for first, second in zip(answers[0::2], answers[1::2]):
        v1, v2 = parse_verdict(first), parse_verdict(second)
        rows.append({"verdict_unit_first": v1, "verdict_baseline_first": v2, "output_unit_first": first,
                     "output_baseline_first": second, "score": pair_score(v1, v2)})
    return rows


def judge_generations(config: JudgeConfig, prompts: dict[str, Sequence[Message]], unit_rows: list[dict[str, Any]],
                      baseline_rows: list[dict[str, Any]], baseline_unit: str, where: str,
                      console: Any = None) -> list[dict[str, Any]]:
    """judgments rows (harness.records.JUDGMENT_FIELDS) for a unit's generation rows against the
    baseline's, matched by (prompt_id, sample_idx); `where` names the files in errors."""
    template = load_template(template_path(config))
    theirs = {(r["prompt_id"], r["sample_idx"]): r["response"] for r in baseline_rows}
    missing = [(r["prompt_id"], r["sample_idx"]) for r in unit_rows if (r["prompt_id"], r["sample_idx"]) not in theirs]
    if missing or len(theirs) != len(unit_rows):
        raise UserError(f"{where}: the unit's and the baseline's generations cover different (prompt_id, sample_idx) "
                        f"(e.g. {missing[:1] or 'extra baseline rows'}); regenerate both with the same settings.")
    generator = build_judge(config, console)
    try:
        verdicts = judge_pairs(generator, template, judge_settings(config), [prompts[r["prompt_id"]] for r in unit_rows],
                               [r["response"] for r in unit_rows],
                               [theirs[(r["prompt_id"], r["sample_idx"])] for r in unit_rows])
    finally:
        generator.close()
    return [{"prompt_id": r["prompt_id"], "sample_idx": r["sample_idx"], "baseline_unit": baseline_unit, **v}
            for r, v in zip(unit_rows, verdicts)]
