"""DPC-kNN cluster centres and nearest-centre assignment, in bounded memory.

Density peaks clustering with a kNN density: a point is a good centre when it is
dense (rho = exp(-mean squared distance to its k nearest neighbours)) and far
from any denser point (delta). Centres are the largest rho * delta.

No matrix larger than ``block_tokens**2`` floats is built. A set that fits is
done with one distance matrix (the golden vectors' path). A larger one is cut
into square tiles and each distance is computed once: tile (I, J) serves the
rows of I and, read transposed, the rows of J, keeping every row's k + 1
nearest. delta then needs no second pass for most points: when one of a point's
k + 1 nearest is denser, its nearest denser point is among them (anything
farther is at least as far as that neighbour). Only the local peaks, a small
share, meet every point again. Together about a third of the products of two
blocked passes.

(A bfloat16 screen with float32 checks of its candidates was tried and dropped:
its rigorous error bound, about 0.012 on squared distances of unit rows, is
wider than the gaps between neighbours in real ViT tokens; it settled 16-36%
of rows.)
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def _row_blocks(n_rows: int, n_cols: int, batch: int, block_tokens: int) -> int:
    """Rows per block so that a (batch, rows, n_cols) float matrix stays within block_tokens**2."""
    return max(1, min(n_rows, block_tokens * block_tokens // max(1, n_cols * batch)))


def _dist(a: Tensor, b: Tensor) -> Tensor:
    """Euclidean distances (B, m, n) from one batched Gram product; float32 out.

    Half the cost of torch.cdist on CPU (which pads both operands). bfloat16
    inputs (similarity="fast") are unit rows: one bfloat16 product, d^2 = 2 - 2g.
    """
    if a.dtype == torch.bfloat16:
        d2 = torch.bmm(a, b.transpose(1, 2)).float().mul_(-2.0).add_(2.0)
    else:
        na = (a**2).sum(-1, keepdim=True)
        nb = (b**2).sum(-1).unsqueeze(1)
        d2 = torch.baddbmm(na + nb, a, b.transpose(1, 2), alpha=-2.0)
    return d2.clamp_min_(1e-30).sqrt_()


def _tile_sq(x: Tensor, sq: Tensor | None, a: slice, b: slice) -> Tensor:
    """Squared distances (B, |a|, |b|) between rows a and b of x, with the squared norms sq computed once
    (float32), or d^2 = 2 - 2g for bfloat16 unit rows."""
    if sq is None:
        return torch.bmm(x[:, a], x[:, b].transpose(1, 2)).float().mul_(-2.0).add_(2.0)
    # |a|^2 + |b|^2 first, as _dist does: the sum is symmetric, so mutual neighbours keep equal densities.
    return torch.baddbmm(sq[:, a, None] + sq[:, None, b], x[:, a], x[:, b].transpose(1, 2), alpha=-2.0)


def _keep_smallest(vals: Tensor, idx: Tensor, rows: slice, d: Tensor, col0: int) -> None:
    """Fold a tile d (B, r, c) for ``rows`` (its columns start at col0) into each row's running smallest values
    (vals, ascending) and their columns (idx)."""
    kk = vals.shape[-1]
    cand = torch.topk(d, min(kk, d.shape[-1]), dim=-1, largest=False)
    both_v = torch.cat([vals[:, rows], cand.values], dim=-1)
    both_i = torch.cat([idx[:, rows], cand.indices + col0], dim=-1)
    best = torch.topk(both_v, kk, dim=-1, largest=False)
    vals[:, rows] = best.values
    idx[:, rows] = torch.gather(both_i, -1, best.indices)


def _nearest_tiled(x: Tensor, kk: int, side: int) -> tuple[Tensor, Tensor, Tensor]:
    """Each row's kk smallest distances (ascending) and their columns, and the largest distance, per batch."""
    B, M, _ = x.shape
    # Equal tiles of at most 2048 rows: more tiles put more of the work above the diagonal (n(n+1)/2 of n^2).
    side = math.ceil(M / max(math.ceil(M / side), math.ceil(M / 2048)))
    sq = None if x.dtype == torch.bfloat16 else (x * x).sum(-1)
    vals = torch.full((B, M, kk), float("inf"), device=x.device)
    idx = torch.zeros(B, M, kk, dtype=torch.long, device=x.device)
    d2max = torch.full((B,), float("-inf"), device=x.device)
    for s in range(0, M, side):
        for t in range(s, M, side):
            d2 = _tile_sq(x, sq, slice(s, s + side), slice(t, t + side))
            if t == s:  # mirror: the product's rounding is not symmetric, distances are
                d2 = d2.triu() + d2.triu(1).transpose(1, 2)
            d2max = torch.maximum(d2max, d2.amax(dim=(1, 2)))
            _keep_smallest(vals, idx, slice(s, s + side), d2, t)
            if t != s:
                _keep_smallest(vals, idx, slice(t, t + side), d2.transpose(1, 2), s)
    return vals.clamp_min_(1e-30).sqrt_(), idx, d2max.clamp_min_(1e-30).sqrt_()


def _delta_from_neighbours(x: Tensor, rho: Tensor, idx: Tensor, near: Tensor, dmax: Tensor, block_tokens: int) -> Tensor:
    """delta from each row's nearest neighbours, scanning all points only for rows with no denser neighbour."""
    B, M, _ = x.shape
    denser = torch.gather(rho, 1, idx.flatten(1)).view_as(idx) > rho.unsqueeze(-1)
    delta = torch.where(denser, near, torch.full_like(near, float("inf"))).amin(dim=-1)
    for b in range(B):  # batches differ in how many peaks they have; B is 1 wherever sets are this large
        peaks = torch.isinf(delta[b]).nonzero().flatten()
        rows = _row_blocks(peaks.shape[0], M, 1, block_tokens)
        for s in range(0, peaks.shape[0], rows):
            p = peaks[s : s + rows]
            d = _dist(x[b : b + 1, p], x[b : b + 1])[0]
            above = rho[b].unsqueeze(0) > rho[b, p].unsqueeze(1)
            delta[b, p] = torch.where(above, d, dmax[b]).amin(dim=-1)
    return delta


def dpc_knn(x: Tensor, n_centers: int, k: int = 7, *, block_tokens: int = 4096) -> Tensor:
    """Indices (B, n_centers) of DPC-kNN centres of x (B, M, D), best first.

    Same definition as the release (minus its 1e-6 random tie-break noise):
    rho_i = exp(-mean_{j in kNN(i)} d_ij^2) over the k nearest other points;
    delta_i = min d_ij over denser j, or the largest distance in the set for the
    densest point; centres = top n_centers of rho * delta.
    """
    B, M, _ = x.shape
    if not 1 <= n_centers <= M:
        raise ValueError(f"n_centers must be in [1, {M}], got {n_centers}")
    if x.dtype != torch.bfloat16:
        x = x.float()
    kk = min(k + 1, M)
    side = max(1, int(block_tokens / math.sqrt(B)))
    if M <= side:  # one matrix: keep it for delta
        d = _dist(x, x)
        near = torch.topk(d, kk, dim=-1, largest=False).values[..., 1:]
        rho = (-(near**2).mean(dim=-1)).exp()
        denser = rho.unsqueeze(1) > rho.unsqueeze(2)
        delta = torch.where(denser, d, d.amax(dim=(1, 2)).view(B, 1, 1)).amin(dim=-1)
        return torch.topk(rho * delta, n_centers, dim=-1).indices
    vals, idx, dmax = _nearest_tiled(x, kk, side)
    rho = (-(vals[..., 1:] ** 2).mean(dim=-1)).exp()
    delta = _delta_from_neighbours(x, rho, idx, vals, dmax, block_tokens)
    return torch.topk(rho * delta, n_centers, dim=-1).indices


def nearest(x: Tensor, centers: Tensor, *, block_tokens: int = 4096) -> Tensor:
    """Index (B, M) of the nearest of centers (B, K, D) for every row of x (B, M, D)."""
    B, M, _ = x.shape
    if x.dtype != torch.bfloat16:
        x, centers = x.float(), centers.float()
    rows = _row_blocks(M, centers.shape[1], B, block_tokens)
    out = torch.empty(B, M, dtype=torch.long, device=x.device)
    for s in range(0, M, rows):
        out[:, s : s + rows] = _dist(x[:, s : s + rows], centers).argmin(dim=-1)
    return out
