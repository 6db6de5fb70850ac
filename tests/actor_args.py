"""A hook that records every argument the driver hands to Ray actors (constructors and method calls), so a
test can check that no actor was given a path on the driver's disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest


def _strings(value: Any) -> Iterator[str]:
    """Every string inside `value` (containers, pydantic models and dataclass-like objects walked)."""
    if isinstance(value, (str, Path)):
        yield str(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, (list, tuple, set)):
        for item in value:
            yield from _strings(item)
    elif hasattr(value, "model_dump"):
        yield from _strings(value.model_dump())


class ActorArgs:
    """The strings handed to actors, with the method (or `ClassName()`) they were handed to."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def record(self, target: str, args: Any, kwargs: Any) -> None:
        for text in _strings([list(args or ()), dict(kwargs or {})]):
            self.calls.append((target, text))

    def under(self, folder: Path) -> list[tuple[str, str]]:
        """The (target, string) pairs naming `folder` or a path inside it."""
        root = str(folder.resolve())
        return [(target, text) for target, text in self.calls if root in text or str(folder) in text]


def record_actor_args(monkeypatch: pytest.MonkeyPatch) -> ActorArgs:
    """Patches Ray's actor constructors and method calls in this process to record their arguments."""
    import ray.actor

    seen = ActorArgs()
    method_remote, class_remote = ray.actor.ActorMethod._remote, ray.actor.ActorClass._remote

    def method(self, args=None, kwargs=None, **options):
        seen.record(self._method_name, args, kwargs)
        return method_remote(self, args, kwargs, **options)

    def constructor(self, args=None, kwargs=None, **options):
        seen.record(f"{self.__ray_metadata__.class_name}()", args, kwargs)
        return class_remote(self, args, kwargs, **options)

    monkeypatch.setattr(ray.actor.ActorMethod, "_remote", method)
    monkeypatch.setattr(ray.actor.ActorClass, "_remote", constructor)
    return seen
