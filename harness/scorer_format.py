"""How a scorer sees a (prompt, response) pair, and the file that describes a trained scorer.

Both sides of a Bradley-Terry model need these: its trainer (trainers/scorer_training.py) and its
scorer (evaluators/scorers.py) encode a pair with the same `encode_pair`, so the model is scored
exactly as it was trained; and both read or write its `scorer.json`. They live here, in the floor,
so that training code never imports evaluation code.

`scorer.json` (format `bdpo-bradley-terry-scorer`), next to a Hugging Face sequence classifier:
`score_type`, `threshold`, `template` (a PROMPT_TEMPLATES name), `max_length`, `offset` (subtracted
from every score: the calibration), `calibration` (the rule that set it), `heldout` (pairwise
accuracy on held-out pairs with its 95% CI, or null), `sign_inverted`, `backbone`, `training`
(data hash, steps, ...), `provenance` and `seconds_total`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence, Union

from harness.data import render_prompt
from harness.errors import UserError
from harness.io import atomic_write_json, read_json
from harness.records import Message
from harness.registry import Registry

# A prompt is a conversation ending with the user's message, or plain text (one user message).
Prompt = Union[str, Sequence[Message]]
# What one scorer input becomes before padding: token ids and whatever else the model takes.
Encoding = dict[str, list[int]]

SCORER_FILE = "scorer.json"
SCORER_FORMAT = "bdpo-bradley-terry-scorer"


def as_messages(prompt: Prompt) -> list[Message]:
    """Chat messages; a string is one user message. A system message is merged into the first
    user turn, because neither HH-RLHF's nor beaver's format has a place for it."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if messages and messages[0].get("role") == "system":
        system, rest = messages[0], messages[1:]
        if rest and rest[0].get("role") == "user":
            rest[0] = {"role": "user", "content": f"{system['content']}\n\n{rest[0]['content']}"}
            return rest
        return [{"role": "user", "content": system["content"]}, *rest]
    return messages


# --------------------------------------------------------------------------------------------
# Prompt templates: how a conversation becomes the first text of a (prompt, response) text pair.
# --------------------------------------------------------------------------------------------

PROMPT_TEMPLATES: Registry[Callable[[list[Message]], str]] = Registry("prompt template")


@PROMPT_TEMPLATES.register("hh")
def hh_template(messages: list[Message]) -> str:
    """Anthropic HH-RLHF dialogue text, '\\n\\nHuman: ...\\n\\nAssistant: ...', ending '\\n\\nAssistant:'."""
    return render_prompt(messages, None, use_chat_template=False)


@PROMPT_TEMPLATES.register("qa")
def qa_template(messages: list[Message]) -> str:
    """The question alone for a one-turn prompt (OpenAssistant's reward models take question,
    answer pairs); HH dialogue text for longer conversations."""
    if len(messages) == 1:
        return messages[0]["content"]
    return hh_template(messages)


def encode_pair(tokenizer: Any, template: str, prompt: Prompt, response: str, max_length: int) -> Encoding:
    """Token ids of the text pair (rendered prompt, response), cut to `max_length` tokens.

    Truncation removes tokens from the left of the longer text first, so the response and the end
    of the conversation (what a preference is about) survive. Used by training and scoring alike.
    """
    tokenizer.truncation_side = "left"
    messages = as_messages(prompt)
    if not messages or messages[-1]["role"] != "user":
        raise UserError(f"scorer input: the prompt must end with the user's message, got {messages[-1:]!r}.")
    text = PROMPT_TEMPLATES.get(template)(messages)
    return dict(tokenizer(text, response, truncation="longest_first", max_length=max_length))


# --------------------------------------------------------------------------------------------
# scorer.json
# --------------------------------------------------------------------------------------------


def read_scorer_file(folder: str | Path, name: str) -> dict[str, Any]:
    """The scorer.json of a trained scorer folder; `name` labels the error when it is missing."""
    path = Path(folder) / SCORER_FILE
    if not path.is_file():
        raise UserError(f"scorer '{name}': {path} not found; is {folder} a folder written by "
                        "`bdpo train-scorer`? For other classifiers use type hf-classifier.")
    return read_json(path)


def write_scorer_file(folder: str | Path, meta: dict[str, Any]) -> None:
    atomic_write_json(Path(folder) / SCORER_FILE, meta)
