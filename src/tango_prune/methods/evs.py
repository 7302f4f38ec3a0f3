"""EVS, Efficient Video Sampling (NVIDIA, arXiv 2510.14624), as vLLM ships it: drop tokens that did not change."""
from __future__ import annotations

import torch

from ..core.segment import consecutive_similarity
from ..types import Pruned, VideoTokens
from .registry import register
from .common import VllmFloorMethod, exact_count, finish



def evs_count(retention: float, T: int, L: int, floor: str) -> int:
    """Tokens EVS keeps. "vllm": vLLM's max(L, int(T L r)) (truncation, and never less than one frame's worth);
    "exact": the registry's max(1, round(r T L))."""
    if floor == "vllm":
        return min(T * L, max(L, int(T * L * retention)))
    return exact_count(retention, T * L)


@register("evs")
class EVS(VllmFloorMethod):
    """EVS: keep the tokens that changed most since the same position in the previous frame.

    Every token of frame t > 0 scores 1 - cos(x[t, p], x[t-1, p]) (same spatial position p, previous frame);
    every token of frame 0 scores 255 (above any cosine distance, so the first frame is always kept first).
    One global stable descending sort over all T L scores (ties: lower flat index first) and the first K tokens
    are kept, unmerged. Needs no saliency.

    Source: vLLM 0.32 vllm/multimodal/video_prune/evs.py (``compute_retention_mask``,
    ``compute_retained_tokens_count``; NVIDIA's implementation, used for Qwen2.5-VL / Nemotron with
    ``--video-pruning-rate q``); paper arXiv 2510.14624. vLLM's q is the share pruned: retention = 1 - q.
    Parameters: retention=0.1; floor="vllm" (default) keeps vLLM's count K = max(L, int(T L r)), the count vLLM
    sizes its placeholders with: truncated, and at least one whole frame, so with r T L < L it keeps more than
    asked (hence ``exact_budget = False``); floor="exact" keeps exactly max(1, round(r T L)), and where that is
    below L the first frame is cut to its first K tokens in reading order (the same stable order vLLM's sort
    gives its 255-ties).

    Departures: similarity in float32 whatever the input dtype (vLLM computes in the embeddings' dtype, bf16 in
    serving, where many scores tie and ties go to the lower index; on bf16 inputs the kept sets can differ in
    near-tied tokens). On float32 inputs the kept set equals vLLM's mask (tests/test_method_evs_vidcom2.py).
    """

    def __call__(self, vt: VideoTokens) -> Pruned:
        T, L, _ = vt.features.shape
        dev = vt.features.device
        score = torch.full((T, L), 255.0, device=dev)
        if T > 1:
            sim, _ = consecutive_similarity(vt.features)  # float32, frame by frame: no video-sized float copy
            score[1:] = 1.0 - sim
        K = evs_count(self.retention, T, L, self.floor)
        order = torch.argsort(score.flatten(), descending=True, stable=True)
        index = order[:K]
        info = {"method": "evs", "floor": self.floor, "budget": K,
                "kept_per_frame": torch.bincount(index // L, minlength=T).tolist()}
        return finish(vt, index, info=info)
