"""DivPrune (Alvar et al., arXiv 2503.02175, CVPR 2025): diversity-based token selection."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..types import Pruned, VideoTokens
from .registry import register
from .common import check_retention, exact_count, finish, no_options


def nearest_other_distance(x: Tensor, block: int = 2048) -> Tensor:
    """(N,) cosine distance of each unit row of x to its nearest *other* row, in row blocks (no N x N matrix)."""
    N = x.shape[0]
    out = torch.empty(N, device=x.device)
    for s in range(0, N, block):
        d = 1.0 - (x[s : s + block] @ x.T).float()
        d[torch.arange(d.shape[0]), torch.arange(s, s + d.shape[0])] = float("inf")
        out[s : s + block] = d.min(dim=1).values
    return out


def max_min_diverse(x: Tensor, k: int) -> Tensor:
    """Greedy max-min diversity (DivPrune's Algorithm 1) over unit rows x (N, D): indices in selection order.

    First pick: the row farthest from its nearest neighbour; then, repeatedly, the row whose distance to the
    nearest already-picked row is largest (ties: the lowest index). Distance = 1 - cosine.
    """
    N = x.shape[0]
    if N == 1:
        return torch.zeros(1, dtype=torch.long, device=x.device)
    picked = torch.empty(k, dtype=torch.long, device=x.device)
    picked[0] = torch.argmax(nearest_other_distance(x))
    gap = 1.0 - (x @ x[picked[0]]).float()  # distance of every row to the picked set, updated per step
    gap[picked[0]] = -float("inf")
    # the greedy is sequential by definition: one O(N D) step per kept token, vectorised over tokens
    for i in range(1, k):
        j = torch.argmax(gap)
        picked[i] = j
        gap = torch.minimum(gap, 1.0 - (x @ x[j]).float())
        gap[picked[: i + 1]] = -float("inf")
    return picked


@register("divprune")
class DivPrune:
    """DivPrune: keep the most diverse subset of the video's tokens, a Max-Min Diversity Problem solved greedily.

    Over all T L tokens at once (the paper treats a video's tokens as one set), with distance 1 - cosine of the
    features: the first token is the one farthest from its nearest neighbour, each next one the token farthest
    from everything kept so far. Keeps exactly round(r T L) tokens, unmerged; needs no saliency.

    Parameters: retention=0.1. Source: arXiv 2503.02175, Sec. 3 (Eq. 4-5, Algorithm 1) and its release
    (the ``DivPrune`` function: first pick by the second-smallest column of the distance matrix, then argmax of
    the min distance to the picked set). Departures: the release builds the N x N distance matrix; we never do
    (nearest-neighbour distances in row blocks, then one matrix-vector product per kept token), so memory stays
    O(N D). Selected tokens are excluded from re-selection explicitly (the release relies on their distance 0).
    Cost: one pass over the features per kept token (O(K N D)): 627 passes at 32 x 196 x 3584, r = 0.1. bfloat16 input
    is searched in bfloat16 (rounded distances: exact ties go to the lowest index), other dtypes in float32.
    """

    exact_budget = True

    def __init__(self, retention: float = 0.1, **opts) -> None:
        no_options("divprune", opts)
        self.retention = check_retention(retention)

    def __call__(self, vt: VideoTokens) -> Pruned:
        T, L, D = vt.features.shape
        # bfloat16 input is searched in bfloat16 (2x less memory traffic per step; the release runs in the
        # model's half precision too); everything else in float32
        work = torch.bfloat16 if vt.features.dtype == torch.bfloat16 else torch.float32
        x = F.normalize(vt.features.reshape(T * L, D).float(), dim=-1).to(work)
        picked = max_min_diverse(x, exact_count(self.retention, T * L))
        return finish(vt, picked, info={"method": "divprune"})
