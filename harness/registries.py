"""The project's registries. Each names the modules that fill it (imported on first use)."""

from __future__ import annotations

from typing import Any

from harness.registry import Registry

# Pure loss functions over per-pair sequence log-probs (trainers/losses.py).
LOSSES: Registry[Any] = Registry("loss", populated_by=("trainers.losses",))
# Preference-data loaders, one per file format (harness/data.py).
DATA_FORMATS: Registry[Any] = Registry("data format", populated_by=("harness.data",))
# Completion generators: prompts + sampling settings in, completions out (evaluators/generators.py).
GENERATORS: Registry[Any] = Registry("generator", populated_by=("evaluators.generators",))
# Scorers: (prompt, response) pairs in, one float each out (evaluators/scorers.py, chat_scorers.py).
SCORERS: Registry[Any] = Registry("scorer", populated_by=("evaluators.scorers", "evaluators.chat_scorers"))

# How a run's policies share one generation engine per base model (evaluators/engines.py).
ENGINE_REUSE: Registry[Any] = Registry("engine reuse strategy", populated_by=("evaluators.engines",))

# How `bdpo run --jobs N` / `--executor NAME` runs stages as jobs, several at once (harness/executors.py).
EXECUTORS: Registry[Any] = Registry("executor", populated_by=("harness.executors",))

ALL = (LOSSES, DATA_FORMATS, GENERATORS, SCORERS, ENGINE_REUSE, EXECUTORS)
