"""Preference data: one registered loader per format, the prompt-disjoint split, and the one
function that turns a prompt into model input text.

Every loader reads a `DataSourceConfig` and yields, per input row, either a `PreferencePair` or a
`Drop` (a known quirk of the data, counted by reason). `load_source` adds what every format shares:
option checks, dropping chosen == rejected, `max_pairs`, and the `LoadReport`. Rows that are wrong
rather than quirky raise a one-line `UserError` naming the file, the line or row, and the field.

Conventions (docs/data.md): a prompt is a tuple of chat messages whose last one is the user's;
chosen/rejected are the assistant's reply text; leading and trailing whitespace is stripped from
every message and reply; pair ids are "<source name>:<line or row index>".
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Iterator, Literal, Mapping, NamedTuple, Optional, Sequence, TypeVar, Union

from harness.config import ConfigError, DataConfig, DataSourceConfig, check_kwargs
from harness.errors import UserError
from harness.io import iter_jsonl, read_json
from harness.records import Message, PreferencePair, PromptRecord
from harness.registries import DATA_FORMATS
from harness.registry import suggest

# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------

IDENTICAL = "chosen == rejected"


@dataclass(frozen=True)
class Drop:
    """A row skipped for a known, harmless reason (counted in the LoadReport, not an error)."""

    reason: str


@dataclass
class LoadReport:
    """What one source's loading did: rows read, pairs kept, rows dropped by reason."""

    source: str
    format: str
    path: str
    rows_read: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    # True when max_pairs was reached before the end of the data (the rest was not read).
    truncated: bool = False

    def summary(self) -> str:
        drops = ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items())) or "none"
        more = f" (stopped at max_pairs={self.kept})" if self.truncated else ""
        return f"{self.source}: read {self.rows_read} rows, kept {self.kept} pairs, dropped: {drops}{more}"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "format": self.format, "path": self.path, "rows_read": self.rows_read,
                "kept": self.kept, "dropped": dict(sorted(self.dropped.items())), "truncated": self.truncated}


class LoadResult(NamedTuple):
    """load_source's answer; unpacks as `pairs, report = load_source(source)`."""

    pairs: list[PreferencePair]
    report: LoadReport


# --------------------------------------------------------------------------------------------
# Rows: where they come from (JSONL line, JSON/Parquet row, Hub row) and field checks
# --------------------------------------------------------------------------------------------


_FIELD = object()  # Row.text's default: read the named field itself


@dataclass(frozen=True)
class Row:
    """One input record. `where` names it in errors; `key` becomes the pair id's suffix.

    `renamed` maps a field to the file's column it was read from (the source's `columns`), so
    errors name the column the user sees in the file.
    """

    where: str
    key: str
    data: dict[str, Any]
    renamed: Mapping[str, str] = field(default_factory=dict)

    def label(self, name: str, what: str = "") -> str:
        """The words "field '<name as in the file><what>'" for error messages."""
        return f"field '{self.renamed.get(name, name)}{what}'"

    def get(self, name: str, expected: Sequence[str]) -> Any:
        """The field's value; a missing field names the closest present one."""
        if name not in self.data:  # (a renamed column is never missing: rename_columns checks it)
            present = [self.renamed.get(k, k) for k in self.data]
            expected = [self.renamed.get(k, k) for k in expected]
            raise UserError(f"{self.where}: missing field '{name}'.{suggest(name, present)} "
                            f"Expected fields: {', '.join(expected)}.")
        return self.data[name]

    def text(self, name: str, expected: Sequence[str], value: Any = _FIELD, what: str = "") -> str:
        """A non-empty string field (or `value`, found inside it at `what`), stripped."""
        value = self.get(name, expected) if value is _FIELD else value
        label = self.label(name, what)
        if not isinstance(value, str):
            raise UserError(f"{self.where}: {label} must be a string, got {type(value).__name__}. Fix that row.")
        if not value.strip():
            raise UserError(f"{self.where}: {label} is empty. Remove that row or fill it in.")
        return value.strip()

    def fail(self, message: str) -> UserError:
        return UserError(f"{self.where}: {message}")


def rename_columns(rows: Iterable[Row], columns: Mapping[str, str]) -> Iterator[Row]:
    """The rows with their columns renamed by `columns` ({column in the file: field}), all at once
    (so two columns may swap names). Every mapped column must be in every row; two columns that
    would end with one name are an error."""
    if not columns:
        yield from rows
        return
    for row in rows:
        for column in columns:
            if column not in row.data:
                raise row.fail(f"missing field '{column}' (the source's `columns` maps it to '{columns[column]}')."
                               f"{suggest(column, list(row.data))} Fields in this row: {', '.join(row.data)}.")
        data: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for column, value in row.data.items():
            name = columns.get(column, column)
            if name in data:
                raise row.fail(f"columns '{origin[name]}' and '{column}' would both be field '{name}'. "
                               f"Map only one of them to '{name}' in the source's `columns`.")
            data[name], origin[name] = value, column
        yield Row(row.where, row.key, data, {name: col for name, col in origin.items() if name != col})


JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
JSON_SUFFIXES = (".json", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)
FILE_SUFFIXES = JSONL_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES


def file_rows(path: Path, key_prefix: str = "") -> Iterator[Row]:
    """Rows of one JSONL (streamed), JSON (a list of objects) or Parquet (streamed) file."""
    name = path.name
    if not path.exists():
        raise UserError(f"{path}: file not found. Check the path in your config or command line.")
    if name.endswith(JSONL_SUFFIXES):
        for lineno, obj in iter_jsonl(path):
            yield Row(f"{path}:{lineno}", f"{key_prefix}{lineno}", obj)
    elif name.endswith(JSON_SUFFIXES):
        data = read_json(path)
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a JSON list of objects, got {type(data).__name__}. "
                            f"Use one object per row (or JSONL).")
        for i, obj in enumerate(data):
            if not isinstance(obj, dict):
                raise UserError(f"{path}: row {i}: expected a JSON object, got {type(obj).__name__}.")
            yield Row(f"{path}: row {i}", f"{key_prefix}{i}", obj)
    elif name.endswith(PARQUET_SUFFIXES):
        yield from _parquet_rows(path, key_prefix)
    elif path.is_dir():
        raise UserError(f"{path}: is a folder; this format reads one file (.json, .jsonl(.gz) or .parquet).")
    else:
        raise UserError(f"{path}: unsupported file type. Use .json, .jsonl, .jsonl.gz or .parquet.")


def _parquet_rows(path: Path, key_prefix: str) -> Iterator[Row]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path)
        i = 0
        for batch in reader.iter_batches(batch_size=1024):
            for obj in batch.to_pylist():
                yield Row(f"{path}: row {i}", f"{key_prefix}{i}", obj)
                i += 1
    except (pyarrow.ArrowException, OSError) as e:
        raise UserError(f"{path}: cannot read as Parquet ({e}). The file may be truncated; re-export it.") from None


def _looks_like_path(text: str) -> bool:
    """Hub names are 'name' or 'owner/name'; anything else that is absent locally is a missing file."""
    return text.startswith((".", "/", "~")) or text.endswith(FILE_SUFFIXES) or text.count("/") > 1 or "\\" in text


def hub_rows(name: str, split: str) -> Iterator[Row]:
    """Rows of a Hugging Face Hub data set (needs the Hub; most machines here are offline)."""
    try:
        import datasets

        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # noqa: BLE001 - datasets raises many types (offline, no such name, no split)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(
            f"'{name}' is not a local file or folder, and loading it as a Hugging Face data set failed "
            f"({reason}). Check the path, or download the data set and point `path` at the file."
        ) from None
    for i, obj in enumerate(ds):
        yield Row(f"{name}[{split}]: row {i}", str(i), dict(obj))


def source_rows(source: DataSourceConfig) -> Iterator[Row]:
    """Rows of a source's `path`: a local file, else a Hub data set name (options.split, default train),
    with the source's `columns` renamed."""
    if not source.path:
        raise UserError(f"data source '{source_name(source)}' ({source.format}): `path` is empty. "
                        f"Set it to a file or a Hugging Face data set name.")
    path = Path(source.path).expanduser()
    if path.exists() or _looks_like_path(source.path):
        return rename_columns(file_rows(path), source.columns)
    return rename_columns(hub_rows(source.path, source.options.get("split", "train")), source.columns)


def source_name(source: DataSourceConfig) -> str:
    return source.label


# --------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------

ROLES = ("system", "user", "assistant")


def user_prompt(text: str) -> tuple[Message, ...]:
    return ({"role": "user", "content": text},)


def check_conversation(row: Row, name: str, value: Any) -> tuple[Message, ...]:
    """A conversation field: a non-empty list of {"role", "content"} messages, contents stripped."""
    if not isinstance(value, list) or not value:
        raise row.fail(f"{row.label(name)} must be a string or a non-empty list of messages, got {value!r:.60}.")
    messages = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise row.fail(f"{row.label(name, f'[{i}]')} must be an object with 'role' and 'content', got {m!r:.60}.")
        if m["role"] not in ROLES:
            raise row.fail(f"{row.label(name, f'[{i}].role')} is {m['role']!r}.{suggest(str(m['role']), list(ROLES))} "
                           f"Use one of: {', '.join(ROLES)}.")
        if not isinstance(m["content"], str):
            raise row.fail(f"{row.label(name, f'[{i}].content')} must be a string, got {type(m['content']).__name__}.")
        messages.append({"role": m["role"], "content": m["content"].strip()})
    return tuple(messages)


def check_messages(row: Row, name: str, value: Any) -> tuple[Message, ...]:
    """A prompt conversation field: a non-empty list of {"role", "content"} ending with the user's turn."""
    messages = check_conversation(row, name, value)
    if messages[-1]["role"] != "user" or not messages[-1]["content"]:
        raise row.fail(f"{row.label(name)} must end with a non-empty user message (the turn being answered).")
    return messages


def check_reply(row: Row, name: str, expected: Sequence[str]) -> str:
    """A reply field: a string, or a list holding one assistant message (TRL's conversational form)."""
    value = row.get(name, expected)
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], dict) or value[0].get("role") != "assistant":
            raise row.fail(f"{row.label(name)} must be a string or a list with one assistant message, got {value!r:.80}.")
        return row.text(name, expected, value[0].get("content"), what="[0].content")
    return row.text(name, expected, value)


# --------------------------------------------------------------------------------------------
# Loaders (one registered generator per format; `bdpo ls` shows the first docstring line)
# --------------------------------------------------------------------------------------------

Item = Union[PreferencePair, Drop]
Loader = TypeVar("Loader", bound=Callable[..., Iterator[Item]])


def reads(*fields: str) -> Callable[[Loader], Loader]:
    """Mark a loader with the row fields it reads: the names a source's `columns` may map to."""
    def mark(loader: Loader) -> Loader:
        loader.fields = fields  # type: ignore[attr-defined]
        return loader

    return mark


HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_HH_TURN = re.compile(r"(\n\nHuman:|\n\nAssistant:)")
HH_FIELDS = ("chosen", "rejected")


def _hh_files(path: Path, subsets: Sequence[str]) -> list[tuple[Path, str]]:
    """(file, id prefix) pairs: one file, or every <subset>/*.jsonl(.gz) of a folder, sorted."""
    if not path.is_dir():
        if subsets and path.exists():
            raise UserError(f"{path}: option 'subsets' needs a folder of <subset>/*.jsonl.gz, not a file.")
        return [(path, "")]
    files = sorted(p for p in path.glob("*/*") if p.name.endswith(JSONL_SUFFIXES))
    found = sorted({p.parent.name for p in files})
    for s in subsets:
        if s not in found:
            raise UserError(f"{path}: no subset '{s}'.{suggest(s, found)} Found: {', '.join(found) or 'none'}.")
    chosen = [p for p in files if not subsets or p.parent.name in subsets]
    if not chosen:
        raise UserError(f"{path}: no <subset>/*.jsonl(.gz) files in this folder. Point `path` at the HH-RLHF folder.")
    return [(p, f"{p.parent.name}/{p.name.split('.')[0]}:") for p in chosen]


def parse_hh_dialogue(text: str) -> list[Message]:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> [{"role": "user", "content": "a"}, {"role": "assistant", ...}]."""
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise ValueError("it does not start with '\\n\\nHuman:'")
    return [{"role": "user" if marker == HUMAN else "assistant", "content": body.strip()}
            for marker, body in zip(parts[1::2], parts[2::2])]


def hh_pair(row: Row, source: str, subset: str) -> Item:
    """One HH-RLHF row (two whole dialogues) -> a pair, or a Drop for the data set's known quirks."""
    chosen, rejected = (row.text(f, HH_FIELDS) for f in HH_FIELDS)
    # The texts were stripped; put back the leading "\n\n" the turn markers start with.
    chosen, rejected = "\n\n" + chosen, "\n\n" + rejected
    cut_c, cut_r = chosen.rfind(ASSISTANT), rejected.rfind(ASSISTANT)
    for name, cut in (("chosen", cut_c), ("rejected", cut_r)):
        if cut < 0:
            raise row.fail(f"{row.label(name)} has no '\\n\\nAssistant:' turn; hh-rlhf rows are whole dialogues "
                           f"('\\n\\nHuman: ...\\n\\nAssistant: ...'). Use format 'preference' for prompt/chosen/rejected.")
    if chosen[:cut_c] != rejected[:cut_r]:
        return Drop("dialogues differ before the last assistant turn")
    reply_c, reply_r = chosen[cut_c + len(ASSISTANT):].strip(), rejected[cut_r + len(ASSISTANT):].strip()
    if HUMAN in reply_c or HUMAN in reply_r:
        return Drop("dialogue ends with a human turn")
    if not reply_c or not reply_r:
        return Drop("empty final assistant turn")
    try:
        prompt = parse_hh_dialogue(chosen[:cut_c])
    except ValueError as e:
        raise row.fail(f"{row.label('chosen')}: {e}. Is this really HH-RLHF data?") from None
    if not prompt or prompt[-1]["role"] != "user" or not prompt[-1]["content"]:
        return Drop("prompt does not end with a human turn")
    return PreferencePair(id=f"{source}:{row.key}", prompt=tuple(prompt), chosen=reply_c, rejected=reply_r,
                          source=source, meta={"subset": subset})


@DATA_FORMATS.register("hh-rlhf")
@reads(*HH_FIELDS)
def load_hh_rlhf(source: DataSourceConfig, *, subsets: tuple[str, ...] = ()) -> Iterator[Item]:
    """Anthropic HH-RLHF whole dialogues: a .jsonl(.gz) file, or a folder of <subset>/*.jsonl.gz.

    Prompt = the dialogue up to the last "\\n\\nAssistant:" (it must be the same in chosen and
    rejected), parsed into user/assistant messages; chosen/rejected = the final assistant turns.
    Dropped (counted): dialogues that differ earlier, end with a human turn, or have an empty final
    turn. Option `subsets`: which subset folders to read (default all). meta.subset = folder name.
    """
    path = Path(source.path).expanduser()
    if not source.path or (not path.exists() and not _looks_like_path(source.path)):
        for row in source_rows(source):
            yield hh_pair(row, source_name(source), source.path)
        return
    for file, prefix in _hh_files(path, subsets):
        for row in rename_columns(file_rows(file, prefix), source.columns):
            yield hh_pair(row, source_name(source), file.parent.name)


PKU_FIELDS = ("prompt", "response_0", "response_1", "is_response_0_safe", "is_response_1_safe",
              "better_response_id", "safer_response_id")
PKU_OPTIONAL = ("response_0_severity_level", "response_1_severity_level", "response_0_harm_category",
                "response_1_harm_category")


def _response_id(row: Row, name: str) -> int:
    value = row.get(name, PKU_FIELDS)
    if isinstance(value, bool) or value not in (0, 1):
        raise row.fail(f"{row.label(name)} must be 0 or 1, got {value!r}.")
    return int(value)


def _flag(row: Row, name: str) -> bool:
    value = row.get(name, PKU_FIELDS)
    if not isinstance(value, bool):
        raise row.fail(f"{row.label(name)} must be true or false, got {value!r}.")
    return value


def _harm_categories(value: Any) -> Any:
    """PKU stores {category: bool}; keep the names marked true (sorted), or the value as given."""
    if isinstance(value, dict):
        return sorted(k for k, v in value.items() if v)
    return value


@DATA_FORMATS.register("pku-saferlhf")
@reads(*PKU_FIELDS, *PKU_OPTIONAL)
def load_pku_saferlhf(source: DataSourceConfig, *, pair_by: Literal["safer", "better"] = "safer") -> Iterator[Item]:
    """PKU-SafeRLHF, full schema (JSON, JSONL or Parquet, or the Hub name); pair_by safer|better.

    chosen = the safer (or better) response by `safer_response_id` (`better_response_id`). meta keeps
    the labels: chosen_safe, rejected_safe and, when present, chosen/rejected_severity and
    chosen/rejected_harm_category (the categories marked true), plus pair_by.
    """
    name = source_name(source)
    for row in source_rows(source):
        prompt = row.text("prompt", PKU_FIELDS)
        responses = [row.text(f"response_{i}", PKU_FIELDS) for i in (0, 1)]
        safe = [_flag(row, f"is_response_{i}_safe") for i in (0, 1)]
        better, safer = _response_id(row, "better_response_id"), _response_id(row, "safer_response_id")
        c = safer if pair_by == "safer" else better
        r = 1 - c
        meta: dict[str, Any] = {"pair_by": pair_by, "chosen_safe": safe[c], "rejected_safe": safe[r],
                                "better_is_safer": better == safer}
        for label, fmt in (("severity", "response_{}_severity_level"), ("harm_category", "response_{}_harm_category")):
            if fmt.format(0) in row.data and fmt.format(1) in row.data:
                meta[f"chosen_{label}"] = _harm_categories(row.data[fmt.format(c)])
                meta[f"rejected_{label}"] = _harm_categories(row.data[fmt.format(r)])
        yield PreferencePair(id=f"{name}:{row.key}", prompt=user_prompt(prompt), chosen=responses[c],
                             rejected=responses[r], source=name, meta=meta)


DERIVED_FIELDS = ("prompt", "response")


@DATA_FORMATS.register("pku-saferlhf-derived")
@reads(*DERIVED_FIELDS)
def load_pku_saferlhf_derived(source: DataSourceConfig) -> Iterator[Item]:
    """PKU-SafeRLHF pairs: a JSON list (or JSONL) of {"prompt", "response"}, response = two strings, safer first."""
    name = source_name(source)
    for row in source_rows(source):
        prompt = row.text("prompt", DERIVED_FIELDS)
        value = row.get("response", DERIVED_FIELDS)
        if not isinstance(value, list) or len(value) != 2:
            raise row.fail(f"{row.label('response')} must be a list [safer, less_safe] of two strings, got {value!r:.60}.")
        chosen, rejected = (row.text("response", DERIVED_FIELDS, v, what=f"[{i}]") for i, v in enumerate(value))
        yield PreferencePair(id=f"{name}:{row.key}", prompt=user_prompt(prompt), chosen=chosen, rejected=rejected,
                             source=name, meta={"pair_by": "safer"})


PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")
REPLIES = ("chosen", "rejected")
PAIR_SCORES = ("score_chosen", "score_rejected")
# Every field the `preference` format reads (the targets a source's `columns` may name).
PREFERENCE_ALL_FIELDS = PREFERENCE_FIELDS + ("system", "meta") + PAIR_SCORES

# A layout reads one row shape of the `preference` format (the table in docs/data.md) into
# (prompt messages, chosen reply, rejected reply); its docstring's first line names it.
Parsed = tuple[tuple[Message, ...], str, str]
Layout = Callable[[Row], Parsed]

# (prompt kind, reply kind) -> the layout reading such rows. Prompt kinds: "none" (no field), "text",
# "messages". Reply kinds (chosen and rejected together): "text"; "reply" (lists of one assistant
# message, or one such list and one string); "conversation" (whole conversations).
LAYOUTS: dict[tuple[str, str], Layout] = {}


def layout(*kinds: tuple[str, str]) -> Callable[[Layout], Layout]:
    """Register a layout for the (prompt kind, reply kind) combinations it reads."""
    def add(parse: Layout) -> Layout:
        for kind in kinds:
            if kind in LAYOUTS:
                raise ValueError(f"preference layout {kind} is registered twice")
            LAYOUTS[kind] = parse
        return parse

    return add


def _prompt_kind(row: Row) -> str:
    if "prompt" not in row.data:
        return "none"
    value = row.data["prompt"]
    return "text" if isinstance(value, str) else "messages" if isinstance(value, list) else "other"


def _reply_kind(value: Any) -> str:
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        single = len(value) == 1 and isinstance(value[0], dict) and value[0].get("role") == "assistant"
        return "reply" if single else "conversation"
    return "other"


_KIND_WORDS = {"text": "a string", "reply": "one assistant message", "conversation": "a conversation"}


def row_layout(row: Row) -> Layout:
    """The layout of a `preference` row, from the kinds of its prompt and replies; else a one-line error."""
    values = [row.get(f, PREFERENCE_FIELDS) for f in REPLIES]
    kinds = [_reply_kind(v) for v in values]
    replies = kinds[0] if kinds[0] == kinds[1] else "reply" if set(kinds) == {"text", "reply"} else "mixed"
    found = LAYOUTS.get((_prompt_kind(row), replies))
    if found:
        return found
    if _prompt_kind(row) == "other":
        raise row.fail(f"{row.label('prompt')} must be a string or a non-empty list of messages, "
                       f"got {row.data['prompt']!r:.60}.")
    for name, value, kind in zip(REPLIES, values, kinds):
        if kind == "other":
            raise row.fail(f"{row.label(name)} must be a string or a list of messages, got {type(value).__name__}. "
                           f"Fix that row.")
    if replies == "mixed":
        raise row.fail(f"{row.label('chosen')} is {_KIND_WORDS[kinds[0]]} but {row.label('rejected')} is "
                       f"{_KIND_WORDS[kinds[1]]}; give both as replies (a string or one assistant message) or both as "
                       f"whole conversations.")
    # What is left: no prompt, and chosen/rejected are single assistant messages (TRL's explicit form).
    raise row.fail(f"missing field 'prompt'. {row.label('chosen')} and {row.label('rejected')} are single assistant "
                   f"messages, so the row needs the prompt they answer{NO_PROMPT_HINT}")


def split_shared_messages(row: Row, chosen: tuple[Message, ...], rejected: tuple[Message, ...]) -> Parsed:
    """Implicit prompt of two conversations: their shared leading messages (TRL's extract_prompt);
    after them each must hold exactly one assistant message, the reply."""
    n, limit = 0, min(len(chosen), len(rejected)) - 1  # each keeps at least its last message
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise row.fail(f"{row.label('chosen')} and {row.label('rejected')} share no prompt: their first messages "
                       f"differ. Give both the whole conversation, or the prompt in a 'prompt' field{NO_PROMPT_HINT}")
    for name, rest in zip(REPLIES, (chosen[n:], rejected[n:])):
        if len(rest) != 1 or rest[0]["role"] != "assistant":
            raise row.fail(f"{row.label(name)}: after the {n} messages shared with the other reply, expected one "
                           f"assistant message (the reply), got roles {[m['role'] for m in rest]}.")
    prompt = chosen[:n]
    if prompt[-1]["role"] != "user" or not prompt[-1]["content"]:
        raise row.fail(f"the prompt that {row.label('chosen')} and {row.label('rejected')} share must end with a "
                       f"non-empty user message, got {prompt[-1]!r:.60}.")
    replies = (row.text(name, REPLIES, conv[n]["content"], what=f"[{n}].content")
               for name, conv in zip(REPLIES, (chosen, rejected)))
    return (prompt, *replies)


_LAST_SPACE = re.compile(r"\s\S*\Z")
NO_PROMPT_HINT = " (or map the file's prompt column to it with the source's `columns`, e.g. {question: prompt})."


def split_shared_text(row: Row, chosen: str, rejected: str) -> Parsed:
    """Implicit prompt of two plain texts: their shared start, cut back to a word boundary (TRL takes
    the shared characters and may cut inside a word); the prompt becomes one user message."""
    shared = os.path.commonprefix([chosen, rejected])
    space = _LAST_SPACE.search(shared)
    prompt = chosen[:space.start() if space else 0].strip()
    if not prompt:
        raise row.fail(f"{row.label('chosen')} and {row.label('rejected')} share no prompt: they differ from the "
                       f"first word. Start both with the same prompt text, or give it in a 'prompt' field{NO_PROMPT_HINT}")
    # Both replies keep a word: the cut is at a space inside the shared start, and texts are stripped.
    return user_prompt(prompt), chosen[len(prompt):].strip(), rejected[len(prompt):].strip()


@layout(("text", "text"), ("text", "reply"), ("messages", "text"), ("messages", "reply"))
def explicit_prompt(row: Row) -> Parsed:
    """Explicit prompt (TRL's standard and conversational forms).

    prompt: a string or messages ending with the user's; chosen/rejected: strings or one assistant message.
    """
    value = row.data["prompt"]
    prompt = user_prompt(row.text("prompt", PREFERENCE_FIELDS)) if isinstance(value, str) \
        else check_messages(row, "prompt", value)
    chosen, rejected = (check_reply(row, f, PREFERENCE_FIELDS) for f in REPLIES)
    return prompt, chosen, rejected


@layout(("none", "text"))
def implicit_text(row: Row) -> Parsed:
    """Implicit prompt, texts (TRL's standard form).

    chosen/rejected: whole texts. HH-style dialogues ("Human: ...\\n\\nAssistant: ...") are parsed
    into turns and share their turns up to the last assistant one; other texts share their start."""
    chosen, rejected = (row.text(f, REPLIES) for f in REPLIES)
    if all(("\n\n" + t).startswith(HUMAN) for t in (chosen, rejected)):
        return split_shared_messages(row, *(tuple(parse_hh_dialogue("\n\n" + t)) for t in (chosen, rejected)))
    return split_shared_text(row, chosen, rejected)


@layout(("none", "conversation"))
def implicit_conversation(row: Row) -> Parsed:
    """Implicit prompt, conversations (TRL's conversational form).

    chosen/rejected: whole conversations; the prompt is the messages they share.
    """
    chosen, rejected = (check_conversation(row, f, row.data[f]) for f in REPLIES)
    return split_shared_messages(row, chosen, rejected)


@layout(("text", "conversation"), ("messages", "conversation"))
def prompt_and_conversations(row: Row) -> Parsed:
    """A prompt and whole conversations (UltraFeedback-binarized).

    chosen/rejected: whole conversations, whose shared messages are the prompt; `prompt` must agree
    with them (a string: the last user message; messages: all of the shared ones)."""
    prompt, chosen, rejected = implicit_conversation(row)
    value = row.data["prompt"]
    given, shared = (row.text("prompt", PREFERENCE_FIELDS), prompt[-1]["content"]) if isinstance(value, str) \
        else (check_messages(row, "prompt", value), prompt)
    if given != shared:
        raise row.fail(f"{row.label('prompt')} does not match what {row.label('chosen')} and {row.label('rejected')} "
                       f"share before their replies ({shared!r:.60}). Fix that row.")
    return prompt, chosen, rejected


def with_system(row: Row, prompt: tuple[Message, ...]) -> tuple[Message, ...]:
    """The prompt after the optional `system` field's text as a leading system message (an empty
    `system`, common in orca_dpo_pairs, adds none)."""
    value = row.data.get("system")
    if value is None or (isinstance(value, str) and not value.strip()):
        return prompt
    system = row.text("system", PREFERENCE_ALL_FIELDS, value)
    if prompt[0]["role"] == "system":
        raise row.fail(f"{row.label('system')} is set but the prompt already starts with a system message. "
                       f"Keep one of them.")
    return ({"role": "system", "content": system}, *prompt)


def pair_scores(row: Row) -> dict[str, float]:
    """score_chosen and score_rejected (both or neither; finite numbers), for the pair's meta."""
    if not any(f in row.data for f in PAIR_SCORES):
        return {}
    scores = {}
    for name in PAIR_SCORES:
        value = row.get(name, PAIR_SCORES)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise row.fail(f"{row.label(name)} must be a finite number, got {value!r:.40}.")
        scores[name] = float(value)
    return scores


def preference_pair(row: Row, source: str) -> PreferencePair:
    """A `preference` row in any of its layouts, with the optional `system`, score and `meta` fields."""
    prompt, chosen, rejected = row_layout(row)(row)
    meta = row.data.get("meta") or {}
    if not isinstance(meta, dict):
        raise row.fail(f"{row.label('meta')} must be an object, got {type(meta).__name__}.")
    return PreferencePair(id=f"{source}:{row.key}", prompt=with_system(row, prompt), chosen=chosen,
                          rejected=rejected, source=source, meta={**meta, **pair_scores(row)})


@DATA_FORMATS.register("preference")
@reads(*PREFERENCE_ALL_FIELDS)
def load_preference(source: DataSourceConfig, *, min_score_margin: Optional[float] = None) -> Iterator[Item]:
    """Prompt/chosen/rejected in TRL's four forms or UltraFeedback-binarized's; JSON, JSONL or Parquet.

    Layouts (LAYOUTS; docs/data.md has an example row of each): an explicit `prompt` (a string, or
    messages ending with the user's) with chosen/rejected as strings or one assistant message; no
    prompt, with chosen/rejected as whole texts or whole conversations (the prompt is what they
    share); a `prompt` and whole conversations (checked to agree). Optional fields: `system` (a
    leading system message), `score_chosen` and `score_rejected` (kept in meta), `meta` (kept).
    Option `min_score_margin`: drop (counted) pairs whose score_chosen - score_rejected is below it.
    Other layouts load through the source's `columns` mapping.
    """
    name = source_name(source)
    dropped = f"score margin below {min_score_margin:g}" if min_score_margin is not None else ""
    for row in source_rows(source):
        pair = preference_pair(row, name)
        if min_score_margin is not None:
            if PAIR_SCORES[0] not in pair.meta:
                raise row.fail(f"option min_score_margin needs {row.label(PAIR_SCORES[0])} and "
                               f"{row.label(PAIR_SCORES[1])}; this row has neither. Remove the option or add the scores.")
            if pair.meta["score_chosen"] - pair.meta["score_rejected"] < min_score_margin:
                yield Drop(dropped)
                continue
        yield pair


def _check_preference_params(*, min_score_margin: Optional[float] = None) -> None:
    if min_score_margin is not None and min_score_margin < 0:
        raise ValueError("min_score_margin: must be at least 0 (it is score_chosen - score_rejected)")


load_preference.check_params = _check_preference_params  # type: ignore[attr-defined]


BUILTIN_SAFETY_FILE = "safety_smoke.jsonl"


@DATA_FORMATS.register("builtin-safety")
@reads()
def load_builtin_safety(source: DataSourceConfig) -> Iterator[Item]:
    """Embedded smoke-scale safety set (helpful and harmful requests, written by this project; not a benchmark).

    harness/builtin_data/safety_smoke.jsonl, made by harness/builtin_data/make_safety_smoke.py.
    meta: category (helpful|harmful), topic, chosen_safe, rejected_safe, rejected_kind.
    """
    if source.path:
        raise UserError(f"data source '{source_name(source)}': builtin-safety takes no `path` (got "
                        f"'{source.path}'). Remove it, or use format 'preference' for your own file.")
    with resources.as_file(resources.files("harness.builtin_data").joinpath(BUILTIN_SAFETY_FILE)) as path:
        for row in file_rows(path):
            yield preference_pair(row, source_name(source))


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

# Options every loader accepts (handled here, not by the loader's keywords).
COMMON_OPTIONS = ("split",)


def check_options(source: DataSourceConfig) -> dict[str, Any]:
    """ConfigError for unknown or mistyped `options` (without reading data); the loader's own options."""
    name = source_name(source)
    split = source.options.get("split", "train")
    if not isinstance(split, str):
        raise ConfigError(f"config key 'data.sources.{name}.options.split': expected a string, got {split!r}.")
    options = {k: v for k, v in source.options.items() if k not in COMMON_OPTIONS}
    check_kwargs(DATA_FORMATS.get(source.format), options, f"data.sources.{name}.options")
    return options


def check_columns(source: DataSourceConfig) -> None:
    """ConfigError for a `columns` target that is not a field the source's format reads."""
    fields = list(getattr(DATA_FORMATS.get(source.format), "fields", ()))  # set by @reads
    for column, target in source.columns.items():
        if target not in fields:
            raise ConfigError(f"config key 'data.sources.{source_name(source)}.columns.{column}': '{target}' is not a "
                              f"field of format '{source.format}'.{suggest(target, fields)} "
                              f"Fields: {', '.join(fields) or '(none)'}.")


def load_source(source: DataSourceConfig) -> LoadResult:
    """All pairs of one source (chosen == rejected dropped, at most max_pairs), with its report."""
    name = source_name(source)
    loader = DATA_FORMATS.get(source.format)
    options = check_options(source)
    check_columns(source)
    report = LoadReport(source=name, format=source.format, path=source.path)
    pairs: list[PreferencePair] = []
    for item in loader(source, **options):
        report.rows_read += 1
        if isinstance(item, PreferencePair) and item.chosen == item.rejected:
            item = Drop(IDENTICAL)
        if isinstance(item, Drop):
            report.dropped[item.reason] = report.dropped.get(item.reason, 0) + 1
            continue
        pairs.append(item)
        if source.max_pairs is not None and len(pairs) >= source.max_pairs:
            report.truncated = True
            break
    report.kept = len(pairs)
    if not pairs:
        raise UserError(f"data source '{name}' ({source.path or source.format}): no pairs left "
                        f"({report.summary()}). Check the file and the format.")
    return LoadResult(pairs, report)


def load_sources(data: DataConfig) -> tuple[list[PreferencePair], list[LoadReport]]:
    """Pairs of every source, in config order, and one report per source."""
    pairs: list[PreferencePair] = []
    reports = []
    for source in data.sources:
        result = load_source(source)
        pairs.extend(result.pairs)
        reports.append(result.report)
    return pairs, reports


# --------------------------------------------------------------------------------------------
# The split
# --------------------------------------------------------------------------------------------


def prompt_key(prompt: Sequence[Message]) -> str:
    """The prompt's text (roles and contents): pairs with equal keys always land in the same part."""
    return json.dumps([[m["role"], m["content"]] for m in prompt], ensure_ascii=False)


@dataclass(frozen=True)
class DataSplit:
    scorer_pairs: list[PreferencePair]
    train_pairs: list[PreferencePair]
    # One record per held-out prompt text; prompt_id = the id of its first pair.
    eval_prompts: list[PromptRecord]
    # The pairs of the held-out prompts (never trained on; for held-out preference accuracy).
    eval_pairs: list[PreferencePair]
    # Pairs of prompts beyond `train_prompts` (in no part).
    unused_pairs: int = 0

    def sizes(self) -> dict[str, int]:
        return {"scorer_pairs": len(self.scorer_pairs), "train_pairs": len(self.train_pairs),
                "eval_prompts": len(self.eval_prompts), "eval_pairs": len(self.eval_pairs),
                "unused_pairs": self.unused_pairs}


T = TypeVar("T")


def _seeded_order(items: Iterable[T], seed: int, key: Callable[[T], str] = str) -> list[T]:
    """`items` in the split's seeded order: sha256("<seed>:<key(item)>")."""
    return sorted(items, key=lambda item: hashlib.sha256(f"{seed}:{key(item)}".encode()).hexdigest())


def split_pairs(pairs: Sequence[PreferencePair], *, seed: int, scorer_fraction: float, eval_prompts: int,
                train_prompts: int | None = None, scorer_only_sources: Collection[str] = ()) -> DataSplit:
    """Split pairs into scorer-training, policy-training and held-out evaluation parts by prompt text.

    Rule: the distinct prompt texts are ordered by sha256("<seed>:<prompt text>"); the first
    `eval_prompts` are held out for evaluation, the next round(scorer_fraction x number of distinct
    prompts) (at least 1 when the fraction is above 0) train the scorers, the next `train_prompts`
    (all the rest when None) train the policies; prompts after those are unused. A prompt text is
    in at most one part with all its pairs; the result depends only on the seed and the set of
    pairs (not their order). Pair parts keep the input order; the evaluation prompts are in split
    order, so any first N of them are a seeded random sample across sources.

    Pairs of `scorer_only_sources` (data.sources[*].use: scorer) never train or are answered by the
    policies: their own prompt texts, in the same seeded order, give their first `eval_prompts`
    to `eval_pairs` (the scorers' held-out accuracy) and all the rest to `scorer_pairs`. A
    scorer-only prompt text that a policy source also has follows that text's part (its policy
    training or unused part becomes unused for the scorer-only pairs), so no text is in two parts.
    """
    scorer_only = [p for p in pairs if p.source in scorer_only_sources]
    pairs = [p for p in pairs if p.source not in scorer_only_sources]
    first: dict[str, PreferencePair] = {}
    for p in pairs:
        first.setdefault(prompt_key(p.prompt), p)
    keys = _seeded_order(first, seed)
    n_scorer = max(1, round(scorer_fraction * len(keys))) if scorer_fraction > 0 else 0
    if eval_prompts + n_scorer >= len(keys):
        raise UserError(
            f"data: only {len(keys)} distinct prompts, but eval_prompts={eval_prompts} and scorer_fraction="
            f"{scorer_fraction} ({n_scorer} prompts) leave none for training. Lower data.eval_prompts or "
            f"data.scorer_fraction, or add data.")
    part = {k: "eval" for k in keys[:eval_prompts]}
    part.update({k: "scorer" for k in keys[eval_prompts:eval_prompts + n_scorer]})
    if train_prompts is not None:
        part.update({k: "unused" for k in keys[eval_prompts + n_scorer + train_prompts:]})
    by_part: dict[str, list[PreferencePair]] = {"eval": [], "scorer": [], "train": [], "unused": []}
    for p in pairs:
        by_part[part.get(prompt_key(p.prompt), "train")].append(p)

    # A text the policy sources also have keeps its part; the policies' training part is unused here.
    scorer_part = {k: part[k] if part.get(k) in ("eval", "scorer") else "unused" for k in first}
    own_keys = _seeded_order({prompt_key(p.prompt) for p in scorer_only} - set(first), seed)
    scorer_part.update({k: "eval" if i < eval_prompts else "scorer" for i, k in enumerate(own_keys)})
    for p in scorer_only:
        by_part[scorer_part[prompt_key(p.prompt)]].append(p)

    held_out = [first[k] for k in keys[:eval_prompts]]  # split order: a seeded shuffle across sources
    records = [PromptRecord(prompt_id=p.id, prompt=p.prompt, source=p.source, meta=dict(p.meta)) for p in held_out]
    return DataSplit(scorer_pairs=by_part["scorer"], train_pairs=by_part["train"], eval_prompts=records,
                     eval_pairs=by_part["eval"], unused_pairs=len(by_part["unused"]))


def heldout_control_pairs(eval_pairs: Sequence[PreferencePair], data: DataConfig) -> list[PreferencePair]:
    """The held-out pairs the positive control measures: those of the `use: all` sources, at most
    `data.heldout_pairs` of them, a sample seeded by data.split_seed (sha256 order of pair ids)."""
    pairs = [p for p in eval_pairs if p.source not in data.scorer_only_sources]
    if data.heldout_pairs is None:
        return pairs
    return _seeded_order(pairs, data.split_seed, key=lambda p: p.id)[: data.heldout_pairs]


def split_data(pairs: Sequence[PreferencePair], data: DataConfig) -> DataSplit:
    """split_pairs with the `data` section's settings."""
    return split_pairs(pairs, seed=data.split_seed, scorer_fraction=data.scorer_fraction,
                       eval_prompts=data.eval_prompts, train_prompts=data.train_prompts,
                       scorer_only_sources=data.scorer_only_sources)


# --------------------------------------------------------------------------------------------
# Rendering: the one place a prompt (and a reply) becomes model text
# --------------------------------------------------------------------------------------------

_HH_SPEAKER = {"user": "Human", "assistant": "Assistant"}
_PROBE = "\x00reply\x00"  # a reply no real text contains, to find what the template writes around one


def uses_chat_template(tokenizer: Any, use_chat_template: bool) -> bool:
    return bool(use_chat_template and getattr(tokenizer, "chat_template", None))


def render_prompt(messages: Sequence[Message], tokenizer: Any, use_chat_template: bool) -> str:
    """The model input text for a prompt; trainers and generators both call this.

    With a chat template (and use_chat_template): the template with add_generation_prompt=True
    (it includes whatever BOS the template writes, so tokenise it with add_special_tokens=False
    when a template is used). Otherwise HH's plain form: an optional system text, then
    "\\n\\nHuman: ...\\n\\nAssistant: ..." turns, ending with "\\n\\nAssistant:".
    """
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("a prompt must end with the user's message")
    if uses_chat_template(tokenizer, use_chat_template):
        return tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False, add_generation_prompt=True)
    turns = "".join(m["content"] if m["role"] == "system" else f"\n\n{_HH_SPEAKER[m['role']]}: {m['content']}"
                    for m in messages)
    return turns + ASSISTANT


def render_response(text: str, tokenizer: Any, use_chat_template: bool) -> str:
    """The text that follows render_prompt(...) for an assistant reply `text` (for training).

    With a chat template: the reply as the template writes it after the generation prompt, up to
    and including its end-of-turn marker (e.g. "text<|im_end|>" for ChatML; the newline after the
    marker belongs to the next turn). When the template does not write a rendered prompt as a
    prefix of the full conversation, or writes nothing after the reply: text + eos_token.
    Plain form: " " + text + eos_token, as HH writes "Assistant: text".
    The end marker is part of the response so training teaches the model to stop there.
    """
    eos = getattr(tokenizer, "eos_token", None) or ""
    if not uses_chat_template(tokenizer, use_chat_template):
        return f" {text}{eos}"
    probe = [{"role": "user", "content": "x"}]
    head = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(probe + [{"role": "assistant", "content": _PROBE}], tokenize=False)
    if not full.startswith(head) or _PROBE not in full[len(head):]:
        return text + eos
    before, after = full[len(head):].split(_PROBE, 1)
    after = after.rstrip()
    return before + text + (after or eos)


def fit_prompt(messages: Sequence[Message], tokenizer: Any, use_chat_template: bool,
               max_tokens: int) -> tuple[tuple[Message, ...], bool]:
    """The prompt, shortened to at most `max_tokens` rendered tokens for generation; (prompt, was_cut).

    Rule: drop the earliest turns (keeping a leading system message) while more than the final user
    message remains; if that message alone is still too long, keep the END of its text (the part
    nearest the reply), as training keeps the end of a long prompt.
    """
    def n_tokens(msgs: Sequence[Message]) -> int:
        text = render_prompt(msgs, tokenizer, use_chat_template)
        return len(tokenizer(text, add_special_tokens=not uses_chat_template(tokenizer, use_chat_template))["input_ids"])

    msgs = list(messages)
    if n_tokens(msgs) <= max_tokens:
        return tuple(messages), False
    system = msgs[:1] if msgs[0]["role"] == "system" else []
    turns = msgs[len(system):]
    while len(turns) > 1 and n_tokens(system + turns) > max_tokens:
        turns = turns[1:]
        if turns[0]["role"] == "assistant":  # a conversation restarts with the user
            turns = turns[1:]
    last = dict(turns[-1])
    text = last["content"]
    lo, hi = 0, len(text)  # binary search for the longest suffix of the text that fits
    while lo < hi:
        mid = (lo + hi) // 2
        if n_tokens(system + turns[:-1] + [{**last, "content": text[mid:]}]) <= max_tokens:
            hi = mid
        else:
            lo = mid + 1
    if lo >= len(text):
        raise UserError(f"a prompt cannot fit in {max_tokens} tokens even when cut to its last message. "
                        "Raise generate.max_prompt_tokens or lower generate.max_new_tokens.")
    return tuple(system + turns[:-1] + [{**last, "content": text[lo:]}]), True
