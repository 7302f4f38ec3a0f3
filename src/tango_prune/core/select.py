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
    ranked = dpc_knn(rot.unsqueeze(0), n_anchors, k, block_tokens=block_tokens)[0]
    anchors = ranked.sort().values
    group = nearest(rot.unsqueeze(0), rot[anchors].unsqueeze(0), block_tokens=block_tokens)[0]
    group[anchors] = torch.arange(n_anchors, device=group.device)  # an anchor joins itself, whatever the rounding
    D = features.shape[-1]
    total = torch.zeros(n_anchors, D, dtype=torch.float32, device=features.device)
    for s in range(0, features.shape[0], 512):  # float32 in small pieces: no pool-sized copy
        total.index_add_(0, group[s : s + 512], features[s : s + 512].float())
    size = torch.bincount(group, minlength=n_anchors)
    count = size.clamp(min=1).unsqueeze(1).float()
    w = (1.0 / count).clamp(min=beta)
    merged = w * features[anchors].float() + (1 - w) * (total / count)
    return Merge(anchors, merged.to(features.dtype), group, size, ranked)
