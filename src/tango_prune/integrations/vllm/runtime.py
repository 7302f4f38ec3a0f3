"""The plugin's per-process state and what the model classes share with ``register``: the validated settings, the
one "active" log line, once-only log lines, the saliency-source line, the debug dump (``TANGO_PRUNE_DEBUG_DIR``),
and the reads of vLLM instance attributes that must not fall back silently (``require_attrs``, ``tp_size``)."""
from __future__ import annotations

import itertools
import logging
import os

import torch

from ...types import Pruned, VideoTokens
from .settings import Settings

DEBUG_DIR_VAR = "TANGO_PRUNE_DEBUG_DIR"  # save each pruned video's inputs and output there (tests, debugging)
_state: dict = {"active": None, "announcement": None}
_logged: set[str] = set()
_dump_counter = itertools.count()


def _logger():
    from vllm.logger import init_logger

    return init_logger("vllm.tango_prune")


def active_settings() -> Settings | None:
    """The settings ``register`` validated in this process (None: the plugin is off)."""
    return _state["active"]


def activate(settings: Settings, announcement: str) -> None:
    _state.update(active=settings, announcement=announcement)
    announce()


def announce() -> None:
    """Log once per process that the plugin is active. vLLM 0.32 configures its loggers after loading plugins,
    so a line logged inside ``register`` would be lost: it waits for the first call made once they are
    configured (``register`` itself in late-loading processes, else the count function or the model's init)."""
    if _state["announcement"] is not None and logging.getLogger("vllm").handlers:
        _logger().info(_state["announcement"])
        _state["announcement"] = None


def log_once(key: str, msg: str, *args, level: int = logging.INFO) -> None:
    """Log ``msg % args`` at ``level`` the first time ``key`` is seen in this process."""
    if key not in _logged:
        _logged.add(key)
        _logger().log(level, msg, *args)


def log_saliency(source: str, from_tower: bool) -> None:
    """The saliency source a pruned video actually used, once per source and process: at WARNING when it is not
    the tower's (a fallback changes which tokens are kept, so it must show at vLLM's default log level)."""
    log_once(f"saliency:{source}", "tango-prune: saliency source: %s%s", source,
             "" if from_tower else " (not the vision tower's attention: the kept tokens differ from the default's)",
             level=logging.INFO if from_tower else logging.WARNING)


class MissingVllmName(RuntimeError):
    """A vLLM name the plugin reads is absent: stop rather than run with a guessed value."""


def require_attrs(obj, names, owner: str) -> None:
    """Raise one line naming the first of ``names`` that ``obj`` (a vLLM object; ``owner`` says which) lacks.
    Called at model init, so that a vLLM release that renamed an attribute stops start-up instead of serving
    with a default (each name is in ``vllm_names.NEEDS``)."""
    missing = [n for n in names if not hasattr(obj, n)]
    if missing:
        raise MissingVllmName(f"tango-prune: vLLM's {owner} has no attribute {missing[0]!r} (this vLLM differs from "
                              f"the releases the plugin supports); unset TANGO_PRUNE_METHOD or install a supported vLLM")


def tp_size(attn, owner: str = "vision attention") -> int:
    """The tensor-parallel size of a vLLM attention module (its ``tp_size``), never a default: a wrong 1 would
    silently skip the saliency all-reduce and let every rank keep different tokens."""
    require_attrs(attn, ("tp_size",), owner)
    return int(attn.tp_size)


def dump(vt: VideoTokens, out: Pruned, source: str, retention: float) -> None:
    folder = os.environ.get(DEBUG_DIR_VAR)
    if not folder:
        return
    os.makedirs(folder, exist_ok=True)
    record = {
        "features": vt.features.detach().cpu(), "saliency": None if vt.saliency is None else vt.saliency.cpu(),
        "grid": vt.grid, "timestamps": None if vt.timestamps is None else vt.timestamps.cpu(),
        "index": out.index.cpu(), "kept_features": out.features.detach().cpu(), "merged": out.merged.cpu(),
        "saliency_source": source, "retention": retention,
    }
    torch.save(record, os.path.join(folder, f"{os.getpid()}-{next(_dump_counter):05d}.pt"))

