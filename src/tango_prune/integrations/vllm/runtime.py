"""The plugin's per-process state and what the model classes share with ``register``: the validated settings, the
one "active" log line, once-only log lines and the debug dump (``TANGO_PRUNE_DEBUG_DIR``)."""
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


def log_once(key: str, msg: str, *args) -> None:
    if key not in _logged:
        _logged.add(key)
        _logger().info(msg, *args)


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

