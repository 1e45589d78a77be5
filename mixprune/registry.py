"""A named registry (register / get / names), timm style, for swappable pieces, and the plot style a
piece brings with it.

A piece is registered once, with everything it brings (a signal: its score, its structured group
importance and its style; an INT8 recipe: its suffix, quantizer, record and style), so a new piece is
one entry. A name registered twice is a programming error, refused at import.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Generic, TypeVar

from .errors import ConfigError, MixpruneError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, error: type[MixpruneError] = ConfigError):
        self.kind, self.error = kind, error
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: make ``item`` available as ``name``; ValueError when ``name`` is taken (two pieces
        under one name would silently replace each other)."""
        def wrap(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered already")
            self._items[name] = item
            return item
        return wrap

    def get(self, name: str) -> T:
        if name not in self._items:
            raise self.error(f"unknown {self.kind} '{name}' (known: {', '.join(self.names())})")
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def __contains__(self, name: str) -> bool:
        return name in self._items


@dataclasses.dataclass(frozen=True)
class Style:
    """How a registered piece's series is drawn on the report's plots (a matplotlib marker and color).
    The structured family's series of the same piece keep its color with a marker of their own
    (``structured_marker``; None: the piece exists in one family only, drawn with ``marker``). The
    report reads no stage code: the stage writes ``record(...)`` into strategy.json's ``style`` and the
    ranking rows carry it."""

    marker: str
    color: str
    structured_marker: str | None = None

    def record(self, structured: bool = False) -> dict:
        """strategy.json's ``style`` {marker, color} for a candidate of the given family."""
        marker = self.structured_marker if structured and self.structured_marker else self.marker
        return {"marker": marker, "color": self.color}
