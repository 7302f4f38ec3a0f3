"""The registry itself, apart from the package so that method modules can register without importing it back."""
from __future__ import annotations

from typing import Callable, Protocol

from ..types import Pruned, VideoTokens


class Pruner(Protocol):
    """What ``get_method(name)(retention=..., **opts)`` returns. ``exact_budget`` (class attribute, default
    False) says the method keeps exactly max(1, round(retention * T * L)) tokens; otherwise it keeps at most
    that plus one per frame and segment part (the rounding up its release does)."""

    name: str

    def __call__(self, vt: VideoTokens) -> Pruned: ...


_REGISTRY: dict[str, Callable[..., Pruner]] = {}


def register(name: str):
    """Class decorator adding a pruner factory under ``name``."""

    def deco(factory):
        if name in _REGISTRY:
            raise ValueError(f"a method named {name!r} is already registered")
        _REGISTRY[name] = factory
        factory.name = name
        return factory

    return deco


def get_method(name: str) -> Callable[..., Pruner]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of {list_methods()}")
    return _REGISTRY[name]


def list_methods() -> list[str]:
    return sorted(_REGISTRY)
