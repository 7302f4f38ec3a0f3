"""Architectures vLLM can prune that the plugin does not cover refuse to start while ``TANGO_PRUNE_METHOD`` is set.

vLLM prunes videos itself (EVS / VidCom2, ``--video-pruning-rate``) in more architectures than the plugin replaces
(``vllm_names.PRUNABLE_ARCHS``, kept complete by ``scripts/vllm_api_check.py``). With a tango-prune method asked for, such
a model would prune with vLLM's own method instead, silently (and, where its processor lives in a Qwen module whose
count the plugin replaces, with a count that disagrees with vLLM's mask). The architecture is only known where vLLM
resolves it, so ``register`` registers each uncovered one that this vLLM has under ``"coverage:<arch>__vllm_<v>"``,
vLLM's lazy ``module:class`` form for out-of-tree models: a subclass of vLLM's own class whose ``__init__`` (the
worker's model init) raises one line when pruning is on, and otherwise (``--video-pruning-rate`` unset or 0, nothing
to prune) logs once and builds vLLM's model unchanged.

The subclass is built on first access (module ``__getattr__``) from vLLM's own registry table, so the real model
module is imported only when that architecture is served. vLLM inspects a lazily registered class once in a
subprocess (about 30 s on 2 CPU cores) and caches the result under ``VLLM_CACHE_ROOT/modelinfos`` per version of
this file; the vLLM version in the class name keeps one release's cached answer from serving another.
"""
from __future__ import annotations

import re

from .vllm_names import PRUNABLE_ARCHS
from .runtime import active_settings, log_once
from .settings import METHOD_VAR, read_settings

_SEP = "__vllm_"
_covered: list[str] = []  # what register() covers in this process (for the message)
_classes: dict[str, type] = {}


def lazy_name(arch: str, version: str) -> str:
    return f"{arch}{_SEP}{re.sub(r'[^0-9A-Za-z]', '_', version)}"


def refuse_uncovered(covered, version: str) -> list[str]:
    """Register the refusing class for every prunable architecture of this vLLM not in ``covered``; returns them."""
    from vllm import ModelRegistry

    _covered[:] = sorted(covered)
    supported = ModelRegistry.get_supported_archs()
    out = []
    for arch in sorted(PRUNABLE_ARCHS - set(covered)):
        if arch in supported:
            ModelRegistry.register_model(arch, f"{__name__}:{lazy_name(arch, version)}")
            out.append(arch)
    return out


def message(arch: str, method: str) -> str:
    covered = ", ".join(_covered) or "see docs/vllm.md"
    return (f"tango-prune does not cover {arch}: vLLM would prune its videos with its own EVS, not "
            f"{METHOD_VAR}={method}; covered: {covered}. Serve a covered model, or unset {METHOD_VAR} to use vLLM's "
            f"own pruning")


def stock_class(arch: str) -> type:
    """vLLM's own class for ``arch``, from its static table (the live registry may hold this module's entry)."""
    import importlib

    from vllm.model_executor.models import registry

    mod, cls = registry._VLLM_MODELS[arch]
    return getattr(importlib.import_module(mod if mod.startswith("vllm.") else f"vllm.model_executor.models.{mod}"), cls)


def _refusing_class(arch: str) -> type:
    base = stock_class(arch)

    def __init__(self, *, vllm_config, prefix: str | None = None) -> None:
        settings = active_settings() or read_settings()
        mm = vllm_config.model_config.multimodal_config
        if settings is not None and mm is not None and mm.is_multimodal_pruning_enabled():
            raise RuntimeError(message(arch, settings.method))
        if settings is not None:
            log_once(f"uncovered:{arch}", "tango-prune: %s is not covered; --video-pruning-rate is unset or 0, so "
                     "vLLM runs it unpruned", arch)
        super(cls, self).__init__(vllm_config=vllm_config, **({} if prefix is None else {"prefix": prefix}))

    # vLLM's name, so that nothing keyed on the class name treats it differently when it runs unpruned
    cls = type(base.__name__, (base,), {
        "__init__": __init__, "__module__": __name__,
        "__doc__": f"vLLM's {base.__name__}, refusing to start while a tango-prune method is set and pruning is on"})
    return cls


def __getattr__(name: str):
    arch, sep, _ = name.partition(_SEP)
    if not sep or arch not in PRUNABLE_ARCHS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _classes:
        _classes[name] = _refusing_class(arch)
    return _classes[name]


__all__ = ["lazy_name", "message", "refuse_uncovered", "stock_class"]
