"""The plugin's per-process state, shared by ``register`` and the model classes: the validated settings and what
it logs (the one "active" line, once-only lines, the saliency-source line). The debug dump is ``debug_dump.py``;
the checked reads of vLLM attributes (``require_attrs``, ``tp_size``) are in ``vllm_names.py``."""
from __future__ import annotations

import logging

from .settings import Settings

_state: dict = {"active": None, "announcement": None}
_logged: set[str] = set()


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
