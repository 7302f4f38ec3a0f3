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


def _value(text: str):
    low = text.lower()
    if low in ("true", "on"):
        return True
    if low in ("false", "off"):
        return False
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def resolve_methods(spec: str) -> list[tuple[str, str, dict]]:
    """Comma-separated entries: 'all' (every registered method), ``name`` or ``name:key=value:key=value`` (options of
    that method, e.g. ``tango:strope=off``) -> [(label, name, options)], each name checked against the registry."""
    entries = []
    for m in (m.strip() for m in spec.split(",")):
        entries += list_methods() if m == "all" else [m] if m else []
    if not entries:
        raise ValueError("methods is empty; pass 'all' or names such as tango,topk,uniform")
    out = []
    for e in entries:
        name, *pairs = e.split(":")
        get_method(name)  # raises a ValueError naming the choices
        opts = {}
        for kv in pairs:
            if "=" not in kv:
                raise ValueError(f"method option {kv!r} in {e!r} must look like key=value, e.g. tango:strope=off")
            k, v = kv.split("=", 1)
            opts[k.strip()] = _value(v.strip())
        out.append((e, name, opts))
    return out
