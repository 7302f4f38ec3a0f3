"""Saliency preparation: sink masking, automatic sink detection, a feature-only fallback."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def feature_saliency(features: Tensor, frames_per_chunk: int = 16) -> Tensor:
    """Distinctiveness of each token within its frame: 1 - cos(token, frame mean), in [0, 2].

    For inputs that come without attention (a serving engine hands over the
    merged embeddings only): tokens unlike the frame's average content score high.
    """
    T, L, _ = features.shape
    out = torch.empty(T, L, dtype=torch.float32, device=features.device)
    for s in range(0, T, frames_per_chunk):
        x = features[s : s + frames_per_chunk].float()
        mean = F.normalize(x.mean(dim=1, keepdim=True), dim=-1)
        out[s : s + x.shape[0]] = 1.0 - (F.normalize(x, dim=-1) * mean).sum(dim=-1)
    return out


def auto_sinks(saliency: Tensor, z_min: float = 8.0, ratio_min: float = 5.0, max_share: float = 0.05) -> list[int]:
    """Positions that draw outlying attention in (nearly) every frame: attention sinks.

    Each frame's saliency is divided by its median; a position's typical level is
    its median over frames. Positions whose typical level is at least
    ``ratio_min`` times the frame median and a robust z-score of ``z_min`` above
    the other positions are sinks; at most ``max_share`` of the positions.
    """
    T, L = saliency.shape
    s = saliency.float()
    rel = s / s.median(dim=1, keepdim=True).values.clamp_min(1e-12)
    level = rel.median(dim=0).values  # (L,)
    med = level.median()
    mad = (level - med).abs().median().clamp_min(1e-6) * 1.4826
    z = (level - med) / mad
    cand = ((z > z_min) & (level > ratio_min)).nonzero().flatten()
    cap = max(1, int(L * max_share))
    if cand.numel() > cap:
        cand = cand[torch.topk(z[cand], cap).indices]
    return sorted(cand.tolist())


def mask_sinks(saliency: Tensor, sinks: list[int] | tuple[int, ...]) -> Tensor:
    """A float32 copy of saliency (T, L) with the sink positions set to 0 in every frame."""
    out = saliency.float().clone()
    if len(sinks):
        L = out.shape[1]
        bad = [i for i in sinks if not 0 <= i < L]
        if bad:
            raise ValueError(
                f"sink_indices {bad} are outside the frame's {L} positions; use the sinks of this model's grid or 'auto'"
            )
        out[:, list(sinks)] = 0
    return out


@torch.no_grad()
def global_query(q: Tensor, k: Tensor, grid: list[list[int]], merge: int, order: Tensor | None = None,
                 all_reduce=None, total_heads: int | None = None) -> list[Tensor]:
    """SPEC step 0 for Qwen's towers: per video, (T, L) saliency over its merged tokens in raster order: per
    temporal patch, the mean query over the patch's merged tokens against each merged token's mean key (its
    merge group's), softmax, mean over heads.

    q, k:   (N, heads, d) rotated queries/keys of the last block, N patches, each 2 x 2 merge group contiguous.
    grid:   per video (t, h, w) in patches; L = h * w / merge**2.
    order:  (N / merge**2,) permutation taking the tower's token order to raster order (Qwen2.5-VL's window
            reordering: vLLM's ``reverse_indices``); None when the tower runs in raster order (Qwen3-VL).
    all_reduce / total_heads: with tensor parallelism each rank holds some heads; the head sum is all-reduced so
            that every rank selects the same tokens.
    """
    unit = merge * merge
    N, heads, d = q.shape
    q = q.float().view(N // unit, unit, heads, d).mean(dim=1)
    k = k.float().view(N // unit, unit, heads, d).mean(dim=1)
    if order is not None:
        order = order.to(q.device)
        q, k = q[order], k[order]
    scale = d**-0.5
    out, a = [], 0
    for t, h, w in grid:  # one einsum per video: frames of one video share L
        n = int(h) * int(w) // unit
        t = int(t)
        qf = q[a : a + t * n].view(t, n, heads, d).mean(dim=1)  # (t, heads, d)
        kf = k[a : a + t * n].view(t, n, heads, d)
        att = torch.softmax(torch.einsum("thd,tnhd->thn", qf, kf) * scale, dim=-1).sum(dim=1)  # (t, n)
        if all_reduce is not None:
            att = all_reduce(att)
        out.append(att / (total_heads or heads))
        a += t * n
    return out


@torch.no_grad()
def mean_attention_received(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """(n, N) attention each of the N tokens receives, mean over heads and queries, per image:
    ``softmax(q.float() @ k.float().mT * scale, -1).mean(dim=(1, 2))`` with q, k (n, heads, N, d) in any float
    dtype (the tower's own; upcast one image at a time, as float32 holds every bfloat16 product exactly).

    The same float32 operations as that one-liner, one image at a time in one reused (heads, N, N) buffer: the
    scaled logits written by one GEMM, softmax in place, the column sums. No other N^2 tensor is allocated (the
    one-liner on 8 SigLIP frames allocates and streams three of 272 MB). Equal to it up to float32 rounding order
    (relative ~1e-7; tests/test_saliency_fallback.py).
    """
    n, heads, N, _ = q.shape
    out = torch.empty(n, N, dtype=torch.float32, device=q.device)
    buf = torch.empty(heads, N, N, dtype=torch.float32, device=q.device)
    for i in range(n):
        buf.baddbmm_(q[i].float(), k[i].float().mT, beta=0.0, alpha=scale)  # beta=0: the old contents are ignored
        # the CPU kernel normalises each row where it stands; elsewhere a fresh tensor (cheap on a caching allocator)
        p = torch._softmax(buf, -1, False, out=buf) if buf.device.type == "cpu" else torch.softmax(buf, dim=-1)
        torch.sum(p, dim=(0, 1), out=out[i])
    return out.div_(heads * N)
