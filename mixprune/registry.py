"""A named registry (register / get / names), timm style, for swappable pieces."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from .errors import ConfigError, MixpruneError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, error: type[MixpruneError] = ConfigError):
        self.kind, self.error = kind, error
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: make ``item`` available as ``name``."""
        def wrap(item: T) -> T:
            self._items[name] = item
            return item
        return wrap

    def get(self, name: str) -> T:
        if name not in self._items:
            raise self.error(f"unknown {self.kind} '{name}' (known: {', '.join(self.names())})")
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
