"""Name -> builder registries (torchvision style) that refuse duplicates and suggest close names."""
from __future__ import annotations

from typing import Callable

from .errors import suggest


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._builders: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[Callable], Callable]:
        def decorator(builder: Callable) -> Callable:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._builders[name] = builder
            return builder

        return decorator

    def get(self, name: str) -> Callable:
        if name not in self._builders:
            raise ValueError(
                f"unknown {self.kind} {name!r}{suggest(name, self._builders)}; "
                f"valid names: {', '.join(self.names())}"
            )
        return self._builders[name]

    def build(self, name: str, **kwargs):
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: str) -> bool:
        return name in self._builders
