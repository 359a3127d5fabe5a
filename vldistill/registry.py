"""Names to things: one small registry type behind every extension point.

Towers, text towers, datasets, losses, similarities, augmentations, neighbour-search backends,
matching algorithms and evaluation methods are each a `Registry`. Adding one is one decorated
function::

    @LOSSES.register("my_loss")
    def my_loss(logits, target): ...

An unknown name raises `UnknownNameError` listing the known ones; the config validates its
choices against the same registries, so a newly registered name is accepted everywhere at once.

A registration may carry an options dataclass (`register("name", options=MyOptions)`): the
component's own block of the config (e.g. `model.image_tower_args.NAME`) is checked by it and
arrives as keyword arguments (`vldistill.options`). `example=` gives the registry-driven tests
a small instance to build (what it is depends on the registry: see each one's docstring).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

from .errors import UnknownNameError
from .options import parse_options

T = TypeVar("T")


def tower_family(spec: str) -> str:
    """The registry name in a tower spec `PREFIX:ARG` (`timm` of `timm:resnet18`), which also
    keys the family's options block (`model.image_tower_args.timm`)."""
    return spec.partition(":")[0]


class Registry(Generic[T]):
    """A named collection of one kind of thing (`kind` is used in messages: "loss", "dataset")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._info: dict[str, dict] = {}
        self._options: dict[str, type | None] = {}

    def register(self, name: str, *, options: type | None = None, **info) -> Callable[[T], T]:
        """Decorator: register the decorated object under `name`, with its options dataclass
        (None: it takes none) and optional `info` fields."""
        def wrap(obj: T) -> T:
            self.add(name, obj, options=options, **info)
            return obj
        return wrap

    def add(self, name: str, obj: T, *, options: type | None = None, **info) -> None:
        """Register `obj` under `name` (a second registration of a name replaces the first)."""
        self._entries[name] = obj
        self._info[name] = info
        self._options[name] = options

    def remove(self, name: str) -> None:
        """Forget `name` (tests register throwaway entries and take them out again)."""
        self._entries.pop(name, None)
        self._info.pop(name, None)
        self._options.pop(name, None)

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._entries[name]

    def info(self, name: str) -> dict:
        self.get(name)
        return self._info[name]

    def example(self, name: str, folder: Path | None = None) -> Any:
        """What the registry-driven tests build for `name`: its registered `example` (a function
        is called with `folder`, where it may write files), or None when it has none."""
        example = self.info(name).get("example")
        return example(folder) if callable(example) else example

    def options_class(self, name: str) -> type | None:
        """The options dataclass `name` was registered with (None: it takes no options)."""
        self.get(name)
        return self._options.get(name)

    def options(self, name: str, block: Mapping[str, Any] | None = None, key: str | None = None) -> dict[str, Any]:
        """`name`'s options from its config block (`key`, for errors), checked by its dataclass,
        defaults filled in: the keyword arguments its registered function is called with."""
        return parse_options(self.options_class(name), block, key or f"{self.kind} {name!r} options",
                             f"{self.kind} {name!r}")

    def names(self) -> list[str]:
        """Registered names in registration order (tables list methods in this order)."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


__all__ = ["Registry", "tower_family"]
