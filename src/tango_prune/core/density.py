"""DPC-kNN cluster centres and nearest-centre assignment, in bounded memory.

Density peaks clustering with a kNN density: a point is a good centre when it is
dense (rho = exp(-mean squared distance to its k nearest neighbours)) and far
from any denser point (delta). Centres are the largest rho * delta.

No matrix larger than ``block_tokens**2`` floats is built: point sets larger than
``block_tokens`` are processed in row blocks and distances are recomputed for
the second pass instead of being stored.
"""
from __future__ import annotations

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
    rows = _row_blocks(M, M, B, block_tokens)
    cached = None
    rho = torch.empty(B, M, device=x.device)
    dmax = torch.full((B,), float("-inf"), device=x.device)
    for s in range(0, M, rows):
        d = _dist(x[:, s : s + rows], x)
        near = torch.topk(d, kk, dim=-1, largest=False).values[..., 1:]
        rho[:, s : s + rows] = (-(near**2).mean(dim=-1)).exp()
        dmax = torch.maximum(dmax, d.amax(dim=(1, 2)))
        if rows >= M:
            cached = d
    delta = torch.empty(B, M, device=x.device)
    for s in range(0, M, rows):
        d = cached if cached is not None else _dist(x[:, s : s + rows], x)
        denser = rho.unsqueeze(1) > rho[:, s : s + rows].unsqueeze(2)
        delta[:, s : s + rows] = torch.where(denser, d, dmax.view(B, 1, 1)).amin(dim=-1)
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
