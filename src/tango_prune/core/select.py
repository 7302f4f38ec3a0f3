"""Tango's two choices inside a block of frames: which salient tokens, and how context merges.

A block is N frames x P positions (a segment's dynamic positions, its collapsed
static frame, or a single frame). Everything is batched over frames.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .density import dpc_knn, nearest


def salient_in_frames(
    rot: Tensor,
    saliency: Tensor,
    n_salient: int,
    *,
    alpha: float,
    k: int,
    diverse: bool = True,
    block_tokens: int = 4096,
) -> Tensor:
    """Positions (N, m) of the salient tokens chosen in each frame (m <= n_salient).

    Diverse selection (SPEC step 4): take the top floor(alpha * n) tokens by
    saliency, cluster them into n groups with DPC-kNN on the rotated features,
    keep the highest-saliency member of each group. ``diverse=False`` is the plain saliency top-n.
    """
    N, P = saliency.shape
    if not diverse:
        return torch.topk(saliency, min(n_salient, P), dim=1).indices
    n_cand = min(int(alpha * n_salient), P)
    n_groups = min(n_salient, n_cand)
    cand = torch.topk(saliency, n_cand, dim=1).indices  # (N, n_cand), by saliency
    if n_cand <= n_groups or n_cand <= 1:
        return cand
    cx = torch.gather(rot, 1, cand.unsqueeze(-1).expand(-1, -1, rot.shape[-1]))
    centers = dpc_knn(cx, n_groups, k, block_tokens=block_tokens)  # (N, n_groups)
    cc = torch.gather(cx, 1, centers.unsqueeze(-1).expand(-1, -1, cx.shape[-1]))
    group = nearest(cx, cc, block_tokens=block_tokens)  # (N, n_cand)
    # A centre belongs to its own group, even when rounding puts a twin centre nearer.
    group.scatter_(1, centers, torch.arange(n_groups, device=cand.device).expand(N, -1))
    score = torch.gather(saliency, 1, cand)
    # Best member per (frame, group); ties go to the earliest candidate, as argmax does.
    key = (torch.arange(N, device=cand.device).unsqueeze(1) * n_groups + group).flatten()
    best = score.new_full((N * n_groups,), float("-inf")).scatter_reduce(0, key, score.flatten(), "amax")
    slot = torch.arange(n_cand, device=cand.device).expand(N, -1).flatten()
    slot = torch.where(score.flatten() == best[key], slot, torch.full_like(slot, n_cand))
    first = torch.full((N * n_groups,), n_cand, dtype=torch.long, device=cand.device)
    first = first.scatter_reduce(0, key, slot, "amin").view(N, n_groups)  # no group is empty: it holds its centre
    return torch.gather(cand, 1, first)


class Merge(NamedTuple):
    anchors: Tensor  # (A,) indices into the pool, in position order
    features: Tensor  # (A, D) merged features, row i belongs to anchors[i]
    group: Tensor  # (M,) which anchor row each pool token joined
    size: Tensor  # (A,) tokens per anchor, the anchor included
    rank_order: Tensor  # (A,) the same anchors in DPC-kNN rank order (the release writes row i there)


def merge_context(
    features: Tensor,
    rot: Tensor,
    n_anchors: int,
    *,
    beta: float,
    k: int,
    block_tokens: int = 4096,
) -> Merge:
    """Merge a pool of M tokens into n_anchors (SPEC step 5).

    Anchors are DPC-kNN centres on the rotated features; every pool token (the
    anchors included) joins its nearest anchor; an anchor with c members of mean
    m becomes w * anchor + (1 - w) * m with w = max(beta, 1 / c), computed in float32.
    """
    m = merge_context_batched(features.unsqueeze(0), rot.unsqueeze(0), n_anchors, beta=beta, k=k,
                              block_tokens=block_tokens)
    return Merge(*(t[0] for t in m))


def merge_context_batched(
    features: Tensor, rot: Tensor, n_anchors: int, *, beta: float, k: int, block_tokens: int = 4096,
) -> Merge:
    """merge_context for B pools of M tokens at once (B, M, D): each pool is merged on its own (one frame each,
    for videos cut into one-frame segments). Every field of the Merge gains a leading batch dimension."""
    B, M, D = features.shape
    dev = features.device
    ranked = dpc_knn(rot, n_anchors, k, block_tokens=block_tokens)  # (B, A)
    anchors = ranked.sort(dim=1).values
    at = (anchors + torch.arange(B, device=dev).unsqueeze(1) * M).flatten()  # anchors as rows of the flat pools
    centres = rot.reshape(B * M, -1).index_select(0, at).view(B, n_anchors, -1)
    group = nearest(rot, centres, block_tokens=block_tokens)  # (B, M)
    # an anchor joins itself, whatever the rounding
    group.scatter_(1, anchors, torch.arange(n_anchors, device=dev).expand(B, -1))
    flat = (group + torch.arange(B, device=dev).unsqueeze(1) * n_anchors).flatten()
    rows = features.reshape(B * M, D)
    total = torch.zeros(B * n_anchors, D, dtype=torch.float32, device=dev)
    for s in range(0, B * M, 512):  # float32 in small pieces: no pool-sized copy
        total.index_add_(0, flat[s : s + 512], rows[s : s + 512].float())
    size = torch.bincount(flat, minlength=B * n_anchors)
    count = size.clamp(min=1).unsqueeze(1).float()
    w = (1.0 / count).clamp(min=beta)
    own = rows.index_select(0, at).float()
    merged = (w * own + (1 - w) * (total / count)).to(features.dtype)
    return Merge(anchors, merged.view(B, n_anchors, D), group, size.view(B, n_anchors), ranked)
