"""One small registry: name → factory, with suggestions for unknown names."""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


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
        """Build ``name``; the object remembers how (``registry_spec``), so it can be rebuilt later."""
        built = self.get(name)(**kwargs)
        with contextlib.suppress(AttributeError):  # objects that take no attributes are returned as they are
            built.registry_spec = RegistrySpec(self, name, dict(kwargs))  # type: ignore[attr-defined]
        return built

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: str) -> bool:
        return name in self._factories
