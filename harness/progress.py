"""The one progress bar of the project's long loops (policy training and its reference pass, scorer
training, generation, scoring, the synthetic grid)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def progress_bar(enabled: bool = True, console: Console | None = None, fields: tuple[str, ...] = (),
                 **options: Any) -> Progress:
    """A rich Progress on stderr (or `console`): description, bar, done/total, each task field in
    `fields` as `name value` (e.g. "loss", set through add_task/update), time left. Disabled, it
    draws nothing; use it as a context manager so it is closed on errors too."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               *(TextColumn(f"{name} {{task.fields[{name}]:.4f}}") for name in fields), TimeRemainingColumn()]
    return Progress(*columns, console=console or Console(stderr=True), disable=not enabled, **options)
