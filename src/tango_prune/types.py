"""The two values that cross the pruner boundary: what goes in, what comes out."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


def _check_finite(name: str, t: Tensor) -> None:
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf; clean the input (e.g. torch.nan_to_num) before pruning")


@dataclass(frozen=True)
class VideoTokens:
    """One video's visual tokens as the pruner sees them.

    features:       (T, L, D) floating tensor, L == H * W, frame-major then row-major.
    saliency:       (T, L) importance of each token, or None (methods then use a
                    feature-only score and say so in ``Pruned.info``).
    grid:           (T, H, W).
    timestamps:     (T,) seconds of each frame; None means 0, 1, ..., T-1.
    frame_features: (T, D') per-frame descriptor for fastvid segmentation; None
                    means the mean token of each frame.
    """

    features: Tensor
    saliency: Tensor | None
    grid: tuple[int, int, int]
    timestamps: Tensor | None = None
    frame_features: Tensor | None = None

    def __post_init__(self) -> None:
        f = self.features
        if not isinstance(f, Tensor):
            raise ValueError(f"features must be a torch.Tensor of shape (T, L, D), got {type(f).__name__}")
        if f.dim() != 3:
            raise ValueError(f"features must have shape (T, L, D), got {tuple(f.shape)}; add a frame axis for a single image")
        if not f.is_floating_point():
            raise ValueError(f"features must be a floating tensor, got {f.dtype}; convert with .float() or .to(torch.bfloat16)")
        T, L, D = f.shape
        if T == 0:
            raise ValueError("features has T == 0 frames; pass at least one frame")
        if L == 0 or D == 0:
            raise ValueError(f"features has an empty axis {tuple(f.shape)}; need L >= 1 tokens and D >= 1 channels")
        try:
            grid = tuple(int(g) for g in self.grid)
        except TypeError:
            raise ValueError(f"grid must be a tuple (T, H, W), got {self.grid!r}") from None
        if len(grid) != 3:
            raise ValueError(f"grid must be a tuple (T, H, W), got {self.grid!r}")
        if grid[0] != T or grid[1] * grid[2] != L or min(grid) < 1:
            raise ValueError(
                f"grid {grid} does not match features {tuple(f.shape)}: need grid[0] == T and H * W == L"
            )
        object.__setattr__(self, "grid", grid)
        _check_finite("features", f)
        s = self.saliency
        if s is not None:
            if not isinstance(s, Tensor) or tuple(s.shape) != (T, L):
                shape = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
                raise ValueError(f"saliency must have shape (T, L) = {(T, L)}, got {shape}; pass None to use a feature-only score")
            if not s.is_floating_point():
                raise ValueError(f"saliency must be a floating tensor, got {s.dtype}; convert with .float()")
            _check_finite("saliency", s)
        ts = self.timestamps
        if ts is not None:
            ts = torch.as_tensor(ts)
            if ts.dim() != 1 or ts.shape[0] != T:
                raise ValueError(f"timestamps must have shape (T,) = ({T},), got {tuple(ts.shape)}; pass one time in seconds per frame")
            _check_finite("timestamps", ts.float())
            object.__setattr__(self, "timestamps", ts)
        g = self.frame_features
        if g is not None:
            if not isinstance(g, Tensor) or g.dim() != 2 or g.shape[0] != T:
                shape = tuple(g.shape) if isinstance(g, Tensor) else type(g).__name__
                raise ValueError(f"frame_features must have shape (T, D') with T = {T}, got {shape}")
            if not g.is_floating_point():
                raise ValueError(f"frame_features must be a floating tensor, got {g.dtype}")
            _check_finite("frame_features", g)

    @property
    def num_tokens(self) -> int:
        return self.features.shape[0] * self.features.shape[1]

    def times(self) -> Tensor:
        """Frame times in seconds as float32 on the features' device."""
        T = self.features.shape[0]
        if self.timestamps is None:
            return torch.arange(T, dtype=torch.float32, device=self.features.device)
        return self.timestamps.to(device=self.features.device, dtype=torch.float32)


@dataclass(frozen=True)
class Pruned:
    """What a pruner keeps.

    index:      (K,) int64, sorted flat indices into T * L.
    features:   (K, D) in the input dtype; merged where merging happened.
    positions:  (K, 3) int64 (t, h, w) of each kept token.
    segments:   frames per temporal segment (sums to T).
    merged:     (K,) bool, True where ``features`` differs from the input token
                (a context anchor that absorbed others, or a static token that
                carries its segment mean).
    assignment: (T * L,) int64: for every input token, the row of ``index`` that
                represents it (itself, the anchor it was merged into, or its
                static token), -1 where it was dropped without a representative.
    info:       method name, saliency source, budget and per-stage counts.
    """

    index: Tensor
    features: Tensor
    positions: Tensor
    segments: list[int]
    merged: Tensor
    assignment: Tensor
    grid: tuple[int, int, int]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_kept(self) -> int:
        return int(self.index.shape[0])


def positions_of(index: Tensor, grid: tuple[int, int, int]) -> Tensor:
    """(t, h, w) of flat indices into a (T, H, W) grid."""
    _, H, W = grid
    L = H * W
    t = torch.div(index, L, rounding_mode="floor")
    r = index - t * L
    h = torch.div(r, W, rounding_mode="floor")
    return torch.stack([t, h, r - h * W], dim=-1)
