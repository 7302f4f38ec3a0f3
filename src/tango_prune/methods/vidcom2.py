"""VidCom2, Video Compression Commander (Liu et al., arXiv 2505.14454, EMNLP 2025), as vLLM ships it."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..types import Pruned, VideoTokens
from .registry import register
from .common import VllmFloorMethod, exact_count, finish

ALPHAS = (0.125, 0.25, 0.5, 1.0, 2.0)  # Gaussian bandwidths 2^-3 .. 2^1 (release and vLLM)
CHANNEL_SHARE = 0.5  # score in the lowest-variance half of the channels
TEMPERATURE = 0.01  # softmax temperature of the frame-budget shares


def vidcom2_count(retention: float, T: int, L: int, floor: str) -> int:
    """vLLM's max(T, int(T L r)) (one token per frame at least, truncated), or exactly max(1, round(r T L))."""
    if floor == "vllm":
        return max(T, min(int(T * L * retention), T * L))
    return exact_count(retention, T * L)


def gaussian_similarity(x: Tensor, centre: Tensor) -> Tensor:
    """Sum over ALPHAS of exp(-|x - centre|^2 / (2 a)): (T, L, C), (., ., C) -> (T, L)."""
    d2 = ((x - centre) ** 2).sum(dim=-1)
    return sum(torch.exp(-d2 / (2.0 * a)) for a in ALPHAS)


@register("vidcom2")
class VidCom2(VllmFloorMethod):
    """VidCom2: frames unlike the video get more tokens; within a frame, keep the tokens least like the video
    and the frame.

    1. Channels: the round-down half of the D channels with the lowest variance over all T L tokens.
    2. On those channels, L2-normalised: s_v = multi-scale Gaussian similarity to the video's mean token,
       s_f = the same to the frame's mean token (bandwidths 2^-3 .. 2^1 summed); a token's redundancy is
       s_v + s_f.
    3. Frame budgets: frame uniqueness u_t = -mean(s_v over the frame); p = softmax(u / 0.01);
       k_t = round(L min(1, r (1 + p_t - mean p))), clamped to [1, L].
    4. Each frame keeps its k_t least redundant tokens; the total is then reconciled to the count K by dropping
       the most redundant kept tokens or adding the least redundant dropped ones, over the whole video.
    Kept tokens are unmerged. Needs no saliency.

    Source: vLLM 0.32 vllm/multimodal/video_prune/vidcom2.py (``compute_retention_mask``,
    ``compute_retained_tokens_count``, adapted by vLLM from the authors' release github.com/xuyang-liu16/VidCom2);
    vLLM's q is the share pruned: retention = 1 - q. Parameters: retention=0.1; floor="vllm" (default): vLLM's
    count K = max(T, int(T L r)) (truncated; at least one per frame, so with r L < 1 it keeps more than asked:
    ``exact_budget = False``); floor="exact": exactly max(1, round(r T L)) (the reconciliation may then leave a
    frame empty). The constants (bandwidths, channel share 0.5, temperature 0.01) are the release's and vLLM's.

    Departures: float32 throughout (vLLM computes in the embeddings' dtype, bf16 in serving); ties in the
    per-frame selection go to the lower index (vLLM's unsorted topk leaves them to the kernel). On float32
    inputs the kept set equals vLLM's mask (tests/test_method_evs_vidcom2.py).
    """

    def __call__(self, vt: VideoTokens) -> Pruned:
        T, L, D = vt.features.shape
        dev = vt.features.device
        K = vidcom2_count(self.retention, T, L, self.floor)
        x = vt.features.reshape(T * L, D)
        # variance per channel in float32 without a video-sized float copy of all D channels first
        var = x.float().var(dim=0, unbiased=False) if x.dtype != torch.float32 else x.var(dim=0, unbiased=False)
        low = torch.topk(var, max(1, int(D * CHANNEL_SHARE)), largest=False).indices
        f = F.normalize(x.index_select(-1, low).float().view(T, L, -1), dim=-1)
        s_v = gaussian_similarity(f, f.mean(dim=(0, 1), keepdim=True))
        s_f = gaussian_similarity(f, f.mean(dim=1, keepdim=True))
        redundancy = s_v + s_f  # (T, L): low = distinctive = kept

        u = -s_v.mean(dim=-1)
        p = F.softmax((u - u.max()) / TEMPERATURE, dim=0)
        share = (self.retention * (1.0 + p - p.mean())).clamp(max=1.0)
        k = (share * L).round().long().clamp(min=1, max=L)

        rank = torch.empty(T, L, dtype=torch.long, device=dev)  # each token's rank within its frame
        order = torch.argsort(redundancy, dim=1, stable=True)
        rank.scatter_(1, order, torch.arange(L, device=dev).expand(T, L))
        keep = (rank < k[:, None]).flatten()
        flat = redundancy.flatten()
        n = int(k.sum())
        if n > K:  # drop the most redundant kept tokens
            kept = keep.nonzero().flatten()
            keep[kept[torch.topk(flat[kept], n - K).indices]] = False
        elif n < K:  # add the least redundant dropped ones
            free = (~keep).nonzero().flatten()
            keep[free[torch.topk(flat[free], min(K - n, free.numel()), largest=False).indices]] = True
        index = keep.nonzero().flatten()
        info = {"method": "vidcom2", "floor": self.floor, "budget": K, "frame_budgets": k.tolist(),
                "kept_per_frame": torch.bincount(index // L, minlength=T).tolist()}
        return finish(vt, index, info=info)
