"""Generate completions into a JSONL file, reusing every row whose content key is already on disk.

A row's `cache_key` hashes what decides its text: the model (sha256 of the folder's model files; for
a LoRA adapter, of the base's and the adapter's), the rendered prompt, the sampling settings and the
engine with its version. A rerun reuses rows whose key (and sample_idx) match a row of the existing
output file or of the side file and generates the rest.

Crash safety: each finished batch is appended (and fsynced) to `<out>.partial.jsonl`; a truncated last
line there (a crash mid-write) is ignored. The output file is written atomically once at the end, then
the side file is removed. So after a crash nothing is lost but the batch in flight.
"""

from __future__ import annotations

import json
from collections import Counter
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from harness.config import GenerateConfig
from harness.data import render_prompt
from harness.errors import UserError
from harness.io import atomic_write_jsonl, iter_jsonl, sha256_json
from harness.models import model_hash
from harness.progress import progress_bar
from harness.records import GENERATION_FIELDS, PromptRecord, require_fields

from evaluators.generators import Completion, Generator, sampling_settings


@dataclass(frozen=True)
class GenerationStats:
    generator: str
    rows_total: int
    rows_generated: int
    rows_reused: int
    new_tokens: int
    seconds: float  # time spent generating (model loading excluded)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def partial_path(out_path: str | os.PathLike) -> Path:
    out = Path(out_path)
    return out.with_name(out.name + ".partial.jsonl")


def cache_key(model_sha: str, prompt_text: str, settings: GenerateConfig, engine: str) -> str:
    return sha256_json({"model": model_sha, "prompt": prompt_text, "sampling": sampling_settings(settings),
                        "engine": engine})


def read_prompt_records(path: str | os.PathLike) -> list[PromptRecord]:
    """PromptRecord rows (data/prompts.jsonl): prompt_id and prompt (a list of {role, content} messages
    ending with the user's, or a plain string for one user message). Errors name file and line."""
    records = []
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        require_fields(row, ("prompt_id", "prompt"), where)
        prompt = row["prompt"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if (not isinstance(prompt, list) or not prompt
                or not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                           for m in prompt)):
            raise UserError(f"{where}: field 'prompt' must be a string or a non-empty list of "
                            '{"role": ..., "content": ...} messages.')
        if prompt[-1]["role"] != "user":
            raise UserError(f"{where}: the prompt's last message must be the user's (role 'user'), "
                            f"got '{prompt[-1]['role']}'.")
        records.append(PromptRecord(str(row["prompt_id"]), tuple(prompt), str(row.get("source", "")),
                                    dict(row.get("meta", {}))))
    if not records:
        raise UserError(f"{path}: no prompts. Each line needs a JSON object with prompt_id and prompt.")
    return records


def _read_partial(path: Path) -> list[dict[str, Any]]:
    """Rows of the side file; its last line may be cut short by a crash and is then dropped."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    rows = []
    for i, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):
                break
            raise UserError(f"{path}:{i}: invalid JSON in the middle of the resume file. "
                            "Delete that file to regenerate the rows it held.") from None
        if isinstance(row, dict) and all(f in row for f in GENERATION_FIELDS):
            rows.append(row)
    return rows


def _existing_rows(out: Path, side: Path) -> tuple[dict[tuple[str, int], dict[str, Any]], list[dict[str, Any]]]:
    """(cache_key, sample_idx) -> row from the output file and the side file; and the side file's rows."""
    partial = _read_partial(side)
    final = []
    if out.exists():
        for lineno, row in iter_jsonl(out):
            # Refuse to overwrite a file that is not ours (a mistyped --out), rather than lose it.
            if not all(f in row for f in GENERATION_FIELDS):
                raise UserError(f"{out}:{lineno}: not a generations file (expected fields "
                                f"{', '.join(GENERATION_FIELDS)}). Choose another output path or move that file.")
            final.append(row)
    found = {(r.get("cache_key"), r.get("sample_idx")): r for r in final + partial}
    return found, partial


def _row(record: PromptRecord, idx: int, text: str, key: str, completion: Completion,
         sampling: dict[str, Any]) -> dict[str, Any]:
    return {"prompt_id": record.prompt_id, "sample_idx": idx, "prompt": text, "response": completion.text,
            "n_tokens": completion.n_tokens, "finish_reason": completion.finish_reason, "cache_key": key,
            "sampling": sampling}


def generate_to_file(generator: Generator, prompts: Sequence[PromptRecord], out_path: str | os.PathLike,
                     settings: GenerateConfig, model_path: Optional[str] = None, tokenizer: Any = None,
                     use_chat_template: Optional[bool] = None, progress: bool = True,
                     console: Optional[Any] = None, model_sha: Optional[str] = None) -> GenerationStats:
    """Write `settings.n` completions per prompt to `out_path` (GENERATION_FIELDS + `sampling`), in
    prompt order, generating only rows not already on disk. model_path, tokenizer and use_chat_template
    default to the generator's own; `model_sha`, the weights' key in the cache, to model_path's hash
    (a LoRA policy's key is its base's and adapter's: evaluators.engines.Policy.content_hash)."""
    model_path = model_path or generator.model_path
    tokenizer = tokenizer or generator.tokenizer
    if use_chat_template is None:
        use_chat_template = generator.use_chat_template
    if use_chat_template != generator.use_chat_template:
        raise ValueError("use_chat_template differs from the generator's: prompts would be tokenised wrongly")
    ids = [p.prompt_id for p in prompts]
    dupes = sorted(i for i, count in Counter(ids).items() if count > 1)
    if dupes:
        raise UserError(f"duplicate prompt_id(s) {dupes[:5]}: every prompt needs its own id.")

    out, side = Path(out_path), partial_path(out_path)
    engine = generator.engine_version()
    sampling = {**sampling_settings(settings), "engine": engine}
    model_sha = model_sha or model_hash(model_path)
    texts = []
    for p in prompts:
        try:
            texts.append(render_prompt(p.prompt, tokenizer, use_chat_template))
        except ValueError as e:
            raise UserError(f"prompt '{p.prompt_id}': {e}.") from None
    keys = [cache_key(model_sha, t, settings, engine) for t in texts]

    found, partial = _existing_rows(out, side)
    todo = [i for i, k in enumerate(keys) if any((k, j) not in found for j in range(settings.n))]
    generator.check([texts[i] for i in todo], settings, labels=[ids[i] for i in todo])
    # Rewrite the side file with its intact rows, so appending never continues a cut-off line.
    atomic_write_jsonl(side, partial)

    new_tokens, seconds = 0, 0.0
    with progress_bar(progress, console) as bar:
        task = bar.add_task(f"generating ({generator.name})", total=len(todo))
        with open(side, "a", encoding="utf-8") as f:
            for start in range(0, len(todo), settings.batch_size):
                batch = todo[start:start + settings.batch_size]
                t0 = time.perf_counter()
                completions = generator.generate([texts[i] for i in batch], settings)
                seconds += time.perf_counter() - t0
                for i, samples in zip(batch, completions):
                    for j, c in enumerate(samples):
                        row = _row(prompts[i], j, texts[i], keys[i], c, sampling)
                        found[(keys[i], j)] = row
                        new_tokens += c.n_tokens
                        f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
                bar.update(task, advance=len(batch),
                           description=f"generating ({generator.name}, {new_tokens / max(seconds, 1e-9):.0f} tok/s)")

    rows = []
    for p, text, key in zip(prompts, texts, keys):
        for j in range(settings.n):
            # A reused row may come from another prompt_id with the same text: it takes this one's id.
            rows.append({**found[(key, j)], "prompt_id": p.prompt_id})
    atomic_write_jsonl(out, rows)
    side.unlink()
    generated = len(todo) * settings.n
    return GenerationStats(generator=engine, rows_total=len(rows), rows_generated=generated,
                           rows_reused=len(rows) - generated, new_tokens=new_tokens, seconds=seconds)
