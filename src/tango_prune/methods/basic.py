"""Reference points: keep everything, a regular grid, a seeded random draw, and per-frame saliency top-k."""
from __future__ import annotations

import math

import torch

from ..types import Pruned, VideoTokens, positions_of
from .registry import register
from .common import check_retention, exact_count, finish, frame_budgets, no_options, saliency_of, topk_per_frame


@register("none")
class KeepAll:
    """Keeps every token unchanged: the unpruned baseline every comparison starts from. Takes no options;
    ``retention`` is accepted and ignored so that it shares the call of every other method."""

    def __init__(self, retention: float = 1.0, **opts) -> None:
        no_options("none", opts)

    def __call__(self, vt: VideoTokens) -> Pruned:
        T, L, D = vt.features.shape
        idx = torch.arange(T * L, device=vt.features.device)
        return Pruned(
            idx, vt.features.reshape(T * L, D), positions_of(idx, vt.grid), [T],
            torch.zeros(T * L, dtype=torch.bool, device=idx.device), idx.clone(), vt.grid, {"method": "none"},
        )


@register("uniform")
class Uniform:
    """Even spatial subsampling: every frame keeps a regular sub-grid of its tokens.

    The budget round(r T L) is spread evenly over frames (earlier frames take the remainder); a frame
    keeping k of H x W tokens takes the cell centres of an h' x w' grid with h' w' >= k and h'/w' close to
    H/W, dropping surplus cells evenly. Needs no saliency. Parameters: retention=0.1. Source: the
    uniform/spatial-pooling baseline of the token-pruning literature (e.g. the pooling baselines in
    LLaVA-Video, arXiv 2410.02713, and in Tango's comparisons).
    """

    exact_budget = True  # keeps exactly round(retention * T * L)

    def __init__(self, retention: float = 0.1, **opts) -> None:
        no_options("uniform", opts)
        self.retention = check_retention(retention)

    def __call__(self, vt: VideoTokens) -> Pruned:
        T, H, W = vt.grid
        L = H * W
        dev = vt.features.device
        counts = frame_budgets(exact_count(self.retention, T * L), T)
        # one layout per distinct count (at most two), shared by every frame with that count
        score = torch.empty(T, L, device=dev)
        for k in counts.unique().tolist():
            score[counts == k] = grid_rank(H, W, k, dev)
        index = topk_per_frame(score, counts.to(dev))
        return finish(vt, index, info={"method": "uniform"})


def grid_rank(H: int, W: int, k: int, device) -> torch.Tensor:
    """(H*W,) scores whose top k are the cells of an even k-point sub-grid of an H x W grid."""
    score = torch.zeros(H * W, device=device)
    if k <= 0:
        return score
    h = min(H, max(1, round(math.sqrt(k * H / W))))
    w = min(W, math.ceil(k / h))
    h = min(H, math.ceil(k / w))
    rows = ((torch.arange(h, device=device) + 0.5) * H / h).floor().long()
    cols = ((torch.arange(w, device=device) + 0.5) * W / w).floor().long()
    cells = (rows[:, None] * W + cols[None, :]).flatten()
    pick = torch.linspace(0, cells.numel() - 1, k, device=device).round().long()  # drop surplus evenly
    score[cells[pick]] = 1.0
    return score


@register("random")
class Random:
    """A seeded uniform draw of round(r T L) tokens from the whole video (the floor every method must beat).

    Parameters: retention=0.1, seed=0. Same seed, same tokens; the global RNG is never touched.
    """

    exact_budget = True  # keeps exactly round(retention * T * L)

    def __init__(self, retention: float = 0.1, seed: int = 0, **opts) -> None:
        no_options("random", opts)
        self.retention = check_retention(retention)
        self.seed = int(seed)

    def __call__(self, vt: VideoTokens) -> Pruned:
        N = vt.num_tokens
        g = torch.Generator().manual_seed(self.seed)
        index = torch.randperm(N, generator=g)[: exact_count(self.retention, N)]
        return finish(vt, index, info={"method": "random", "seed": self.seed})


@register("topk")
class TopK:
    """Per-frame saliency top-k: the "conventional top-k" selection Tango argues against (arXiv 2604.09547,
    Sec. 3: it piles the budget onto one mode of a multi-modal, long-tailed attention map).

    The budget round(r T L) is spread evenly over frames; each frame keeps its most salient tokens
    (ties: lower index). Saliency: the given one or the feature-only fallback (reported in ``info``).
    Parameters: retention=0.1.
    """

    exact_budget = True  # keeps exactly round(retention * T * L)

    def __init__(self, retention: float = 0.1, **opts) -> None:
        no_options("topk", opts)
        self.retention = check_retention(retention)

    def __call__(self, vt: VideoTokens) -> Pruned:
        T = vt.grid[0]
        sal, source = saliency_of(vt)
        counts = frame_budgets(exact_count(self.retention, vt.num_tokens), T, device=sal.device)
        return finish(vt, topk_per_frame(sal, counts), info={"method": "topk", "saliency": source})
