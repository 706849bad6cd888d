"""One small registry: name → factory, with suggestions for unknown names and keywords."""

from __future__ import annotations

import contextlib
import difflib
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownKeywordError(TypeError, ValueError):
    """A keyword argument the registered factory does not take (a TypeError, as Python's own, and a
    ValueError, as every other bad setting in params.yaml)."""


@dataclass(frozen=True)
class RegistrySpec:
    """The ``Registry.create`` call that built an object: registry, name and keyword arguments."""

    registry: Registry[Any]
    name: str
    kwargs: dict[str, Any]

    def __deepcopy__(self, memo: dict[int, Any]) -> RegistrySpec:
        return self  # immutable, and the registry must stay the module-level one (EMA copies deep-copy modules)


class Registry(Generic[T]):
    """``@REG.register("name")`` on a class or function; ``REG.create("name", **kwargs)`` builds it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def add(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._factories[name] = factory
            return factory

        return add

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._factories:
            close = difflib.get_close_matches(name, self._factories, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(self.names())})")
        return self._factories[name]

    def create(self, name: str, **kwargs: Any) -> T:
        """Build ``name``; the object remembers how (``registry_spec``), so it can be rebuilt later.

        A keyword the factory does not take is an :class:`UnknownKeywordError` naming it, with a suggestion.
        """
        factory = self.get(name)
        valid, open_ended = keywords(factory)
        unknown = [k for k in kwargs if k not in valid]
        if unknown and not open_ended:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, valid, n=1)
                hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
            raise UnknownKeywordError(
                f"{self.kind} {name!r} does not take {', '.join(hints)}; its parameters: {', '.join(valid)}"
            )
        built = factory(**kwargs)
        with contextlib.suppress(AttributeError):  # objects that take no attributes are returned as they are
            built.registry_spec = RegistrySpec(self, name, dict(kwargs))  # type: ignore[attr-defined]
        return built

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: str) -> bool:
        return name in self._factories


def keywords(factory: Callable[..., Any]) -> tuple[list[str], bool]:
    """(keyword parameters of ``factory``, whether it takes others too). A preset taking ``**overrides``
    and annotated to return a class adds that class's parameters (``vit_small_patch16_224`` -> ``ViT``)."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    params = list(inspect.signature(target).parameters.values())
    names = [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        return names, False
    try:
        returned = None if inspect.isclass(factory) else typing.get_type_hints(factory).get("return")
    except NameError:
        returned = None
    if not inspect.isclass(returned):
        return names, True
    inner, open_ended = keywords(returned)
    return names + [n for n in inner if n not in names], open_ended
