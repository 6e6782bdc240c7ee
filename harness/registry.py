"""One small registry mechanism for losses, data formats, generators and scorers.

A registry is filled by the modules named in `populated_by`; they are imported the first time the
registry is read, so `bdpo ls` and config validation see every entry while heavy libraries (vLLM)
are only imported inside the registered class when it is actually built.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Callable, Generic, Iterator, TypeVar

from harness.errors import UserError

T = TypeVar("T")


def suggest(name: str, choices: list[str]) -> str:
    """' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


class Registry(Generic[T]):
    """Name -> object (a function or a class), with helpful errors for unknown names."""

    def __init__(self, kind: str, populated_by: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._populated_by = populated_by
        self._entries: dict[str, T] = {}
        self._populated = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@LOSSES.register("dpo")`. Names are unique per registry."""

        def add(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def _populate(self) -> None:
        if not self._populated:
            self._populated = True
            for module in self._populated_by:
                importlib.import_module(module)

    def get(self, name: str) -> T:
        self._populate()
        if name not in self._entries:
            raise UserError(
                f"unknown {self.kind} '{name}'.{suggest(name, self.names())} "
                f"Known: {', '.join(self.names())} (see `bdpo ls`)."
            )
        return self._entries[name]

    def names(self) -> list[str]:
        self._populate()
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        self._populate()
        return iter(sorted(self._entries.items()))

    def __contains__(self, name: str) -> bool:
        self._populate()
        return name in self._entries


def summary(obj: object) -> str:
    """First line of an entry's docstring, for `bdpo ls`."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""
