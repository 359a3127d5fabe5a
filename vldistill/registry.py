"""Names to things: one small registry type behind every extension point.

Towers, text towers, datasets, losses, similarities, augmentations, neighbour-search backends,
matching algorithms and evaluation methods are each a `Registry`. Adding one is one decorated
function::

    @LOSSES.register("my_loss")
    def my_loss(logits, target): ...

An unknown name raises `UnknownNameError` listing the known ones; the config validates its
choices against the same registries, so a newly registered name is accepted everywhere at once.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of one kind of thing (`kind` is used in messages: "loss", "dataset")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._info: dict[str, dict] = {}

    def register(self, name: str, **info) -> Callable[[T], T]:
        """Decorator: register the decorated object under `name`, with optional `info` fields."""
        def wrap(obj: T) -> T:
            self.add(name, obj, **info)
            return obj
        return wrap

    def add(self, name: str, obj: T, **info) -> None:
        """Register `obj` under `name` (a second registration of a name replaces the first)."""
        self._entries[name] = obj
        self._info[name] = info

    def remove(self, name: str) -> None:
        """Forget `name` (tests register throwaway entries and take them out again)."""
        self._entries.pop(name, None)
        self._info.pop(name, None)

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._entries[name]

    def info(self, name: str) -> dict:
        self.get(name)
        return self._info[name]

    def names(self) -> list[str]:
        """Registered names in registration order (tables list methods in this order)."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ["Registry"]
