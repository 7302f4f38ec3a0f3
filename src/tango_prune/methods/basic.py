"""Reference points: keep everything."""
from __future__ import annotations

import torch

from ..types import Pruned, VideoTokens, positions_of
from . import register


@register("none")
class KeepAll:
    """Keeps every token unchanged (the unpruned baseline); ``retention`` is ignored."""

    def __init__(self, retention: float = 1.0, **opts) -> None:
        if opts:
            raise ValueError(f"method 'none' takes no options, got {sorted(opts)}")

    def __call__(self, vt: VideoTokens) -> Pruned:
        T, L, D = vt.features.shape
        idx = torch.arange(T * L, device=vt.features.device)
        return Pruned(
            idx, vt.features.reshape(T * L, D), positions_of(idx, vt.grid), [T],
            torch.zeros(T * L, dtype=torch.bool, device=idx.device), idx.clone(), vt.grid, {"method": "none"},
        )
