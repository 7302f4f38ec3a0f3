"""Brief events: tokens whose content is on screen for only a few frames at their position (issue 27).

Tango gives a frame one or two tokens at 10% on coarse grids; an object shown in one or two frames then rides on
a density vote it loses (docs/method.md, "Brief events"). These functions find such tokens from the features alone
so the pruner can keep them in addition to its budget, leaving every other choice as the release makes it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def lagged_similarity(features: Tensor, lags: int, lag1: Tensor | None = None) -> Tensor:
    """(lags + 1, T, L) float32: [k, u, p] = cos(features[u, p], features[u + k, p]); NaN where u + k >= T.

    ``lag1``: the (T - 1, L) lag-1 cosines when the caller has them (``segment.consecutive_similarity``, which
    Tango computes anyway); they are copied, not recomputed. Works a frame at a time (at most lags + 1 normalised
    frames alive), never a video-sized float32 copy."""
    T, L, _ = features.shape
    out = torch.full((lags + 1, T, L), float("nan"), dtype=torch.float32, device=features.device)
    out[0] = 1.0
    first = 1
    if lag1 is not None and lags >= 1:
        if lag1.shape != (max(T - 1, 0), L):
            raise ValueError(f"lag1 must be (T - 1, L) = {(max(T - 1, 0), L)}, got {tuple(lag1.shape)}")
        out[1, : T - 1] = lag1
        first = 2
    ring: list[Tensor] = []  # the last `lags` normalised frames, oldest first
    for v in range(T):
        cur = F.normalize(features[v].float(), dim=-1)
        for back, prev in enumerate(reversed(ring), start=1):  # prev is frame v - back
            if back >= first:
                out[back, v - back] = (prev * cur).sum(-1)
        ring = (ring + [cur])[-lags:] if lags else []
    return out


def brief_scores(features: Tensor, max_frames: int, lag1: Tensor | None = None) -> Tensor:
    """(T, L) float32: how clearly each token starts a brief event; -inf where none can start.

    Token (t, p) starts an event of s <= ``max_frames`` frames when frames t .. t+s-1 at p all differ from the frame
    before (t - 1) while the frame after (t + s) looks like the frame before again: score = cos(before, after) -
    max_j cos(frame t+j, before). A moving object stays at a position for several frames, a camera pan never
    returns, a static background never differs, a texture that changes every frame differs as much from everything:
    none of them scores high. At the video's ends, where before or after is missing, the two frames next to the
    present side must stay alike for s + 1 frames, standing in for cos(before, after) (so neither a changing texture
    nor a single change mid-video looks brief at the edges).
    Videos of fewer than 3 frames score -inf (nothing is brief there). ``lag1``: see ``lagged_similarity``.
    """
    T, L, _ = features.shape
    score = torch.full((T, L), float("-inf"), dtype=torch.float32, device=features.device)
    if T < 3 or max_frames < 1:
        return score
    S = min(max_frames, T - 2)
    lag = lagged_similarity(features, S + 1, lag1)
    for s in range(1, S + 1):
        # Interior onsets t = 1 .. T-1-s, indexed by the frame before, u = t - 1 = 0 .. T-2-s.
        n = T - 1 - s
        onset = torch.stack([lag[j + 1, :n] for j in range(s)]).amax(0)
        score[1 : 1 + n] = torch.fmax(score[1 : 1 + n], lag[s + 1, :n] - onset)
        # No frame before: frames 0 .. s-1 against frame s, and frames s .. 2s alike stand in for before ~ after
        # (else the first s frames of a video that changes once at frame s would look brief). NaN past the end.
        first = torch.stack([lag[s - j, j] for j in range(s)]).amax(0)
        stays = torch.stack([lag[j, s] for j in range(1, s + 1)]).amin(0)
        score[0] = torch.fmax(score[0], stays - first)
        # No frame after: the mirror image, frames T-s .. T-1 against frame T-s-1 and the s frames before it.
        last = torch.stack([lag[j + 1, T - s - 1] for j in range(s)]).amax(0)
        stayed = torch.stack([lag[j, T - s - 1 - j] for j in range(1, s + 1) if T - s - 1 - j >= 0]).amin(0)
        score[T - s] = torch.fmax(score[T - s], stayed - last)
    return score.nan_to_num(nan=float("-inf"))


def brief_tokens(score: Tensor, tau: float, per_frame: int) -> Tensor:
    """Sorted flat indices into T * L of the tokens scoring >= ``tau``, at most ``per_frame`` per frame (the
    highest), so a flickering video cannot more than add ``per_frame`` tokens to each frame."""
    T, L = score.shape
    k = max(0, min(per_frame, L))
    if k == 0:
        return torch.empty(0, dtype=torch.long, device=score.device)
    top = torch.topk(score, k, dim=1)
    hit = top.values >= tau
    flat = top.indices + torch.arange(T, device=score.device).unsqueeze(1) * L
    return torch.sort(flat[hit]).values
