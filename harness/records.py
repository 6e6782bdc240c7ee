"""Record schemas: how stages talk through files. Every stage writes these, every reader checks them.

Run directory `runs/<experiment>/` (see harness/rundir.py):

    config.yaml                      resolved RunConfig
    manifest.json                    the units of this run (below) and data/model hashes
    data/prompts.jsonl               held-out evaluation prompts        (PromptRecord)
    data/train_pairs.jsonl           policy-training pairs              (PreferencePair as dict)
    data/scorer_pairs.jsonl          scorer-training pairs              (PreferencePair as dict)
    checkpoints/<unit>/              Hugging Face folder + train_log.jsonl (TrainLogRecord) + train_record.json
    heldout/<unit>.jsonl             implicit rewards on data/eval_pairs.jsonl, one row per pair (trainers/heldout.py)
    generations/<unit>.jsonl         GenerationRecord, one per (prompt_id, sample_idx)
    scores/<unit>.<scorer>.jsonl     ScoreRecord, one per (prompt_id, sample_idx)
    results.json                     see reports/ (metrics with CI and n, provenance)
    report/                          index.html, leaderboard.md/.csv, ablations, plots
    stages/<stage>.json              fingerprint record of each finished stage (written last)

A *unit* is one trained policy: `<variant>-seed<seed>`, plus `reference` for the untrained base.

manifest.json (written by the pipeline, read by `bdpo report`; checked by reports/manifest.py;
full schema in docs/results-schema.md):

    {"experiment": str, "baseline": "dpo",            # baseline: a variant name
     "units": [{"unit": "dpo-seed0", "variant": "dpo", "seed": 0, "loss": "dpo",
                "params": {...loss kwargs}, "train": {...train overrides},
                "sweep": {"beta": 0.1, ...}},       # the config fields this variant varies (ablations)
               {"unit": "reference", "variant": "reference", "seed": null, "loss": null, ...}],
     "scorers": [{"name": "reward", "score_type": "reward", "threshold": 0.0},
                 {"name": "cost", "score_type": "cost", "threshold": 0.0}],   # safe: cost <= threshold
     "config": {...resolved RunConfig}, "provenance": {...harness.provenance.environment()},
     "data_hashes": {...}, "model_hash": str, "seeds": [int, ...],
     "timestamps": {...}}                            # optional; the only time-dependent field
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from harness.errors import UserError

# A chat message: {"role": "system" | "user" | "assistant", "content": str}.
Message = dict[str, str]


@dataclass(frozen=True)
class PreferencePair:
    """One preference pair. The prompt is a conversation whose last message is the user's;
    chosen/rejected are the assistant's next message (text only)."""

    id: str
    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    source: str = ""
    # Format-specific labels kept for analysis, e.g. {"chosen_safe": true, "rejected_safe": false}.
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["prompt"] = [dict(m) for m in self.prompt]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "") -> "PreferencePair":
        require_fields(d, ("id", "prompt", "chosen", "rejected"), where)
        return cls(id=str(d["id"]), prompt=tuple(d["prompt"]), chosen=d["chosen"], rejected=d["rejected"],
                   source=d.get("source", ""), meta=dict(d.get("meta", {})))


@dataclass(frozen=True)
class PromptRecord:
    """A held-out evaluation prompt (data/prompts.jsonl)."""

    prompt_id: str
    prompt: tuple[Message, ...]
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


# generations/<unit>.jsonl rows:
GENERATION_FIELDS = (
    "prompt_id",      # str, PromptRecord.prompt_id
    "sample_idx",     # int, 0..n-1
    "prompt",         # str, the prompt text exactly as rendered for the model (chat template applied)
    "response",       # str, the completion (untrusted text: escape before showing in HTML)
    "n_tokens",       # int, completion tokens
    "finish_reason",  # "stop" | "length"
    "cache_key",      # str, hash of model + prompt + sampling settings + engine version
    "sampling",       # dict, the sampling settings (n, temperature, top_p, max_new_tokens, seed, stop, engine)
)

# scores/<unit>.<scorer>.jsonl rows:
SCORE_FIELDS = (
    "prompt_id",      # str
    "sample_idx",     # int
    "score",          # float, finite; reward: higher = more helpful, cost: higher = more harmful
)

# judgments/<unit>.jsonl rows (evaluators/judge.py; the unit's reply is "A" in the first order):
JUDGMENT_FIELDS = (
    "prompt_id",               # str
    "sample_idx",              # int
    "baseline_unit",           # str, the baseline unit compared with (same seed)
    "verdict_unit_first",      # "A" | "B" | "tie" | "invalid", the unit's reply shown first (as A)
    "verdict_baseline_first",  # the same with the baseline's reply shown first (the unit's is B)
    "output_unit_first",       # str, the judge's raw answers
    "output_baseline_first",
    "score",                   # float in [0, 1]: the unit's mean order score (1 win, 1/2 tie or invalid, 0 loss)
)

# checkpoints/<unit>/train_log.jsonl rows (TRL's names where TRL has one):
TRAIN_LOG_FIELDS = (
    "step", "loss", "learning_rate",
    "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
    "logps/chosen", "logps/rejected",
    "lambda/mean", "lambda/min", "lambda/max",
    "log_grad_ratio/mean", "log_grad_ratio/median", "log_grad_ratio/rejected_dominates",
)


def require_fields(row: dict[str, Any], fields: tuple[str, ...], where: str) -> None:
    """UserError naming the first missing field (and the closest present one) in `where`."""
    for name in fields:
        if name not in row:
            from harness.registry import suggest

            raise UserError(f"{where}: missing field '{name}'.{suggest(name, list(row))} "
                            f"Expected fields: {', '.join(fields)}.")
