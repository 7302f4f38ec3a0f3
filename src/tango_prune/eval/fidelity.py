"""Label-free fidelity of a pruning result: how well the kept tokens stand for the video.

coverage
    Mean, over every input token, of the cosine similarity between the token and the kept
    feature that represents it: the row ``Pruned.assignment`` names (itself, the anchor it was
    merged into, its static token), or, for a token the method dropped without a representative,
    the most similar kept feature anywhere in the video. 1.0 means nothing was lost.

fragmentation
    Mean number of 4-connected spatial pieces a merged cluster forms in a frame, over every
    (cluster, frame) pair in which a cluster of two or more tokens has members. 1.0 means every
    cluster is one compact blob in each frame; a cluster scattered over k islands counts k.
    Methods that merge nothing have no clusters and report NaN.

mode coverage
    The tower's attention is multi-modal: per frame, the 8-connected groups of patches whose saliency is at or above
    the frame's ``quantile`` (0.75) are its attention modes. A mode is covered when one of its patches is kept, or is
    represented by a kept token at the same spatial position (a static token carried through time). Mode coverage =
    covered modes / all modes (1.0: every salient region survives). Top-k keeps the highest peaks and misses the
    lesser modes; Tango's diverse selection is meant to reach them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..types import Pruned, VideoTokens


def coverage(vt: VideoTokens, out: Pruned, chunk: int = 4096) -> float:
    T, L, D = vt.features.shape
    x = vt.features.reshape(T * L, D)
    kept = F.normalize(out.features.float(), dim=-1)
    a = out.assignment
    total = 0.0
    for s in range(0, T * L, chunk):  # chunked: never an (N, K) matrix over the whole video
        xs = F.normalize(x[s : s + chunk].float(), dim=-1)
        rows = a[s : s + chunk]
        has = rows >= 0
        sim = torch.empty(xs.shape[0], device=xs.device)
        if has.any():
            sim[has] = (xs[has] * kept[rows[has]]).sum(-1)
        if (~has).any():
            sim[~has] = (xs[~has] @ kept.T).max(dim=1).values
        total += float(sim.sum())
    return total / (T * L)


def fragmentation(out: Pruned) -> float:
    T, H, W = out.grid
    L = H * W
    a = out.assignment.reshape(T, H, W)
    size = torch.bincount(a[a >= 0], minlength=out.num_kept)
    member = (a >= 0) & (size.clamp_min(0)[a.clamp_min(0)] >= 2)
    if not member.any():
        return float("nan")
    # connected components by min-label propagation over 4-neighbours of the same cluster and frame
    big = T * L
    label = torch.where(member, torch.arange(big, device=a.device).reshape(T, H, W), torch.full_like(a, big))
    while True:
        new = label.clone()
        for dim in (1, 2):  # rows, columns; both directions
            same_fwd = member.narrow(dim, 1, a.shape[dim] - 1) & member.narrow(dim, 0, a.shape[dim] - 1) & (
                a.narrow(dim, 1, a.shape[dim] - 1) == a.narrow(dim, 0, a.shape[dim] - 1)
            )
            lo, hi = label.narrow(dim, 0, a.shape[dim] - 1), label.narrow(dim, 1, a.shape[dim] - 1)
            m = torch.where(same_fwd, torch.minimum(lo, hi), torch.full_like(lo, big))
            new.narrow(dim, 1, a.shape[dim] - 1).copy_(torch.minimum(new.narrow(dim, 1, a.shape[dim] - 1), m))
            new.narrow(dim, 0, a.shape[dim] - 1).copy_(torch.minimum(new.narrow(dim, 0, a.shape[dim] - 1), m))
        if torch.equal(new, label):
            break
        label = new
    pieces = torch.unique(label[member]).numel()
    frame = torch.arange(T, device=a.device).view(T, 1, 1).expand(T, H, W)
    pairs = torch.unique(a[member] * T + frame[member]).numel()
    return pieces / pairs


def _components8(mask: torch.Tensor) -> torch.Tensor:
    """(T, H, W) bool -> labels (T, H, W) int64, equal within each 8-connected group of True cells of one frame
    (min-label propagation with a 3 x 3 max-pool of negated labels), -1 outside the mask."""
    T, H, W = mask.shape
    big = float(T * H * W)
    lab = torch.where(mask, torch.arange(T * H * W, dtype=torch.float32).reshape(T, H, W), torch.tensor(big))
    while True:
        nb = -F.max_pool2d(-lab.unsqueeze(1), 3, stride=1, padding=1).squeeze(1)
        new = torch.where(mask, torch.minimum(lab, nb), torch.tensor(big))
        if torch.equal(new, lab):
            break
        lab = new
    return torch.where(mask, lab.long(), torch.tensor(-1))


def mode_coverage(vt: VideoTokens, out: Pruned, quantile: float = 0.75, through_time: bool = True) -> float:
    """See the module docstring; ``through_time=False`` counts only tokens kept in the mode's own frame."""
    if vt.saliency is None:
        raise ValueError("mode coverage needs the tower's saliency (VideoTokens.saliency is None)")
    T, H, W = vt.grid
    sal = vt.saliency.float().reshape(T, H * W)
    mask = (sal >= torch.quantile(sal, quantile, dim=1, keepdim=True)).reshape(T, H, W)
    labels = _components8(mask)
    a = out.assignment
    flat = torch.arange(T * H * W)
    hw = flat % (H * W)
    rep = out.positions[a.clamp_min(0)]
    same_spot = (a >= 0) & (rep[:, 1] * W + rep[:, 2] == hw)
    kept = torch.zeros(T * H * W, dtype=torch.bool)
    kept[out.index] = True
    covered = (kept | (same_spot if through_time else torch.zeros_like(kept))).reshape(T, H, W)
    modes = torch.unique(labels[mask])
    hit = torch.unique(labels[mask & covered])
    return hit.numel() / max(1, modes.numel())
