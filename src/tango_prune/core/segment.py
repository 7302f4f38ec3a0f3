"""Temporal segmentation: split a video into runs of similar frames.

Both functions return segment sizes (frames per segment, summing to T) and work
on host-side numpy copies of the small similarity arrays, so the dynamic
programme never compares device scalars.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def consecutive_similarity(features: Tensor, frames_per_chunk: int = 1) -> tuple[Tensor, Tensor]:
    """Cosine similarity of every token with the same position in the next frame, and token norms.

    Returns ((T-1, L), (T, L)) float32. Works a frame at a time: the float32 copy
    stays small and cached instead of faulting in a fresh video-sized buffer
    (with vecdot, 10 ms vs 43 ms for 16-frame chunks at 32 x 196 x 3584). The norms let later stages
    normalise without another reduction over the features.
    """
    T, L, D = features.shape
    dev = features.device
    sim = torch.empty(max(T - 1, 0), L, dtype=torch.float32, device=dev)
    norms = torch.empty(T, L, dtype=torch.float32, device=dev)
    prev = None
    for s in range(0, T, frames_per_chunk):
        cur = features[s : s + frames_per_chunk].float()
        n = cur.shape[0]
        norms[s : s + n] = torch.linalg.vector_norm(cur, dim=-1)
        if prev is not None:  # the pair that straddles two chunks
            sim[s - 1] = torch.linalg.vecdot(prev, cur[0])
        if n > 1:
            sim[s : s + n - 1] = torch.linalg.vecdot(cur[:-1], cur[1:])
        prev = cur[-1]
    if T > 1:
        sim /= (norms[:-1] * norms[1:]).clamp_min(1e-12)
    return sim, norms


def frame_similarity(frame_features: Tensor) -> Tensor:
    """Cosine similarity of consecutive per-frame descriptors (T, D') -> (T-1,) float32."""
    g = F.normalize(frame_features.float(), dim=-1)
    return (g[:-1] * g[1:]).sum(dim=-1)


def _static_counts(ok: np.ndarray, max_len: int) -> np.ndarray:
    """count[a, d] = number of positions whose similarity stays true over intervals a .. a+d-1.

    ``ok`` is (T-1, L) bool. The run of consecutive true intervals starting at
    each (a, l) is computed backwards in one sweep over frames, then a histogram
    per start frame turned into "at least d" counts.
    """
    n, L = ok.shape
    run = np.zeros((n + 1, L), dtype=np.int64)
    for a in range(n - 1, -1, -1):
        run[a] = np.where(ok[a], run[a + 1] + 1, 0)
    run = np.minimum(run[:n], max_len)
    hist = np.zeros((n, max_len + 2), dtype=np.int64)
    np.add.at(hist, (np.repeat(np.arange(n), L), run.ravel()), 1)
    return np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]  # [a, d] = #positions with run >= d


def holitom_segments(similarity: Tensor, tau: float, max_window: int = 1024) -> list[int]:
    """HoliTom's segmentation: the partition maximising the number of static tokens.

    similarity: (T-1, L) per-token similarity of consecutive frames. A window of
    frames [a, b] scores (b - a) * #positions whose similarity exceeds ``tau`` on
    every interval inside it; windows hold at most ``max_window`` frames. Ties go
    as in the release: a single frame beats an equal-scoring window, and among
    equal windows the shortest wins.
    """
    n = similarity.shape[0]
    T = n + 1
    if T == 1:
        return [1]
    ok = (similarity > tau).cpu().numpy()
    span = min(max_window, T) - 1  # longest window, in intervals
    ge = _static_counts(ok, span)
    dp = np.zeros(T + 1)  # dp[i + 1] = best total for frames 0..i; dp[0] = 0
    start = np.zeros(T, dtype=np.int64)
    for i in range(T):
        best, best_s = dp[i], i
        s = np.arange(i - 1, max(0, i - span) - 1, -1)  # window starts, shortest window first
        if s.size:
            vals = dp[s] + (i - s) * ge[s, i - s]
            j = int(np.argmax(vals))
            if vals[j] > best:
                best, best_s = vals[j], int(s[j])
        dp[i + 1] = best
        start[i] = best_s
    sizes = []
    end = T - 1
    while end >= 0:
        sizes.append(end - int(start[end]) + 1)
        end = int(start[end]) - 1
    return sizes[::-1]


def fastvid_segments(similarity: Tensor, n_cuts: int = 8, tau: float = 0.9) -> list[int]:
    """FastVID's DySeg: cut where frame similarity < tau and at the n_cuts - 1 lowest boundaries.

    similarity: (T-1,) similarity of consecutive frames.
    """
    n = similarity.shape[0]
    if n == 0:
        return [1]
    low = torch.topk(similarity, min(n_cuts - 1, n), largest=False).indices
    below = torch.nonzero(similarity < tau).flatten()
    cuts = torch.unique(torch.cat([low, below])).cpu().numpy()  # sorted; cut after frame c
    bounds = np.concatenate([[-1], cuts, [n]])
    return np.diff(bounds).astype(int).tolist()
