"""Exact budgets: turn the release's token count into exactly the one asked for.

The release rounds up per frame and per segment part, and caps a segment's
raised ratio at 1, so it may keep a few tokens more than retention * T * L (up
to one per frame and part) or many fewer (mostly static videos). A serving
engine sizes its placeholders before pruning runs and needs the exact count.
"""
from __future__ import annotations

import torch
from torch import Tensor


def exact_count(retention: float, num_tokens: int) -> int:
    return max(1, min(num_tokens, int(round(retention * num_tokens))))


def fit_budget(
    index: Tensor, features: Tensor, merged: Tensor, owner: Tensor,
    all_features: Tensor, score: Tensor, target: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Drop or add kept tokens so exactly ``target`` remain; returns sorted (index, features, merged, owner).

    Surplus: the unmerged kept tokens of lowest ``score`` go first (they carry
    nothing but themselves), then merged ones by score, and tokens of score +inf
    last of all (a brief event's token, kept in addition to the release's).
    Deficit: the highest-``score`` tokens not yet kept are added with their own
    features; they also represent themselves from then on.
    ``all_features`` is (T * L, D); ``score`` is (T * L,) saliency.
    """
    K = index.shape[0]
    dev = index.device
    if K > target:
        # Lexicographic: merged rows last, then by score; drop the first K - target.
        key = score[index].float()
        order = torch.argsort(key, stable=True)
        order = order[torch.argsort(merged[order].to(torch.int8), stable=True)]
        order = order[torch.argsort(torch.isposinf(key[order]).to(torch.int8), stable=True)]
        keep_rows = torch.sort(order[K - target :]).values
        new_row = torch.full((K,), -1, dtype=torch.long, device=dev)
        new_row[keep_rows] = torch.arange(target, device=dev)
        owner = torch.where(owner >= 0, new_row[owner.clamp(min=0)], owner)
        return index[keep_rows], features[keep_rows], merged[keep_rows], owner
    if K < target:
        free = torch.ones(score.shape[0], dtype=torch.bool, device=dev)
        free[index] = False
        cand = free.nonzero().flatten()
        add = cand[torch.topk(score[cand].float(), target - K).indices]
        return keep_also(index, features, merged, owner, all_features, add)
    return index, features, merged, owner


def keep_also(
    index: Tensor, features: Tensor, merged: Tensor, owner: Tensor, all_features: Tensor, add: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Add the tokens ``add`` (flat indices, none of them kept yet) with their own features; they represent
    themselves from then on. A token that was merged into an anchor stays in that anchor's mean (the anchor's
    feature is what the release computed). Returns sorted (index, features, merged, owner)."""
    K, dev = index.shape[0], index.device
    index = torch.cat([index, add])
    features = torch.cat([features, all_features[add].to(features.dtype)])
    merged = torch.cat([merged, torch.zeros(add.shape[0], dtype=torch.bool, device=dev)])
    owner = owner.clone()
    owner[add] = torch.arange(K, K + add.shape[0], device=dev)
    order = torch.argsort(index)
    new_row = torch.empty_like(order)
    new_row[order] = torch.arange(order.shape[0], device=dev)
    owner = torch.where(owner >= 0, new_row[owner.clamp(min=0)], owner)
    return index[order], features[order], merged[order], owner
