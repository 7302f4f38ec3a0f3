"""Synthetic video tokens at real shapes, for timing the pruner (speed does not depend on content,
but segment lengths and the static share do, so the input imitates video: scenes, a still
background, moving foreground, long-tailed multi-modal saliency with a few sink positions)."""
from __future__ import annotations

import math

import torch

from ..types import VideoTokens


def synthetic_video(
    frames: int,
    side: int = 14,
    dim: int = 3584,
    *,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    rank: int = 32,
    scene_frames: tuple[int, int] = (4, 24),
    background_share: float = 0.6,
    sinks: tuple[int, ...] = (11, 12, 27, 28, 41, 169),
) -> VideoTokens:
    """A (frames, side*side, dim) video built frame by frame in ``dtype`` (no float32 copy of the whole).

    Tokens share a low-rank basis; each scene draws new content; background
    positions change little within a scene, foreground ones a lot.
    """
    g = torch.Generator().manual_seed(seed)
    L = side * side
    basis = torch.randn(rank, dim, generator=g) / math.sqrt(rank)
    feats = torch.empty(frames, L, dim, dtype=dtype)
    sal = torch.empty(frames, L)
    yy, xx = torch.meshgrid(torch.arange(side).float(), torch.arange(side).float(), indexing="ij")
    yy, xx = yy.flatten(), xx.flatten()
    t = 0
    while t < frames:
        n = int(torch.randint(scene_frames[0], scene_frames[1] + 1, (1,), generator=g))
        content = torch.randn(L, rank, generator=g) @ basis
        noise_level = torch.where(torch.rand(L, 1, generator=g) < background_share, 0.3, 1.5)
        centres = torch.rand(3, 2, generator=g) * side
        velocity = torch.randn(3, 2, generator=g) * 0.5
        for f in range(t, min(frames, t + n)):
            feats[f] = (content + noise_level * torch.randn(L, dim, generator=g)).to(dtype)
            s = -torch.log(torch.rand(L, generator=g)) * 0.05  # exponential tail
            c = centres + velocity * (f - t)
            for (cy, cx), amp in zip(c.tolist(), (1.0, 0.7, 0.4)):
                s += amp * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 3.0)
            s[[i for i in sinks if i < L]] += 3.0
            sal[f] = s / s.sum()
        t += n
    return VideoTokens(feats, sal, (frames, side, side), torch.arange(frames, dtype=torch.float32) * 0.5)


def noise_video(
    frames: int, side: int = 14, dim: int = 3584, *, dtype: torch.dtype = torch.bfloat16, seed: int = 0,
    rank: int = 64, noise: float = 6.4,
) -> VideoTokens:
    """A video with no static position: one rank-``rank`` base shared by every frame plus each frame's own noise,
    ``noise`` times the base's scale (continuous camera motion or sensor noise: no two frames agree anywhere).
    Saliency is uniform noise. Built frame by frame in ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    L = side * side
    base = torch.randn(L, rank, generator=g) @ (torch.randn(rank, dim, generator=g) / math.sqrt(rank))
    feats = torch.empty(frames, L, dim, dtype=dtype)
    for f in range(frames):
        feats[f] = (base + noise * torch.randn(L, dim, generator=g)).to(dtype)
    sal = torch.rand(frames, L, generator=g)
    sal = sal / sal.sum(dim=1, keepdim=True)
    return VideoTokens(feats, sal, (frames, side, side), torch.arange(frames, dtype=torch.float32) * 0.5)
