"""Tango (Yin et al. 2026, arXiv 2604.09547): diverse salient selection + ST-RoPE context merging."""
from __future__ import annotations

from ..config import TangoConfig
from ..pruner import prune_video_tokens
from ..types import Pruned, VideoTokens
from .registry import register


@register("tango")
class Tango:
    """Tango. Options are TangoConfig's fields (defaults: the authors' release, SPEC-tango.md)."""

    def __init__(self, retention: float = 0.1, **opts) -> None:
        unknown = set(opts) - set(TangoConfig.field_names())
        if unknown:
            raise ValueError(f"unknown tango options {sorted(unknown)}; valid: {TangoConfig.field_names()}")
        self.config = TangoConfig(retention=retention, **opts)

    def __call__(self, vt: VideoTokens) -> Pruned:
        return prune_video_tokens(vt, self.config)
