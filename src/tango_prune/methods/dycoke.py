"""DyCoke's token temporal merging (Tao et al., arXiv 2411.15024, CVPR 2025), its pre-LLM stage."""
from __future__ import annotations

import torch
from torch import Tensor

from ..core.segment import consecutive_similarity
from ..types import Pruned, VideoTokens
from .registry import register
from .common import check_retention, exact_count, finish, no_options, saliency_of, topk_per_frame

DEFAULTS = {"k": 0.7}
WINDOW = 4  # TTM's structure (two pairs, then first vs third) is defined for windows of four frames


def apportion(total: int, weights: Tensor) -> Tensor:
    """Integers summing to ``total`` (< weights.sum()) in proportion to ``weights``, each at most its weight:
    floors, then one more for the largest remainders (ties: earlier entries)."""
    W = int(weights.sum())
    scaled = weights * total
    out = torch.div(scaled, W, rounding_mode="floor")
    extra = total - int(out.sum())
    order = torch.argsort(-(scaled % W), stable=True)
    out[order[:extra]] += 1
    return out


@register("dycoke")
class DyCoke:
    """DyCoke, first stage only: token temporal merging (TTM) over windows of four frames.

    In each window (f0, f1, f2, f3) the first frame is the reference and is kept whole. f1 and f2 are compared
    with f0, f3 with f2, position by position (cosine of the tokens at the same (h, w)); each compared frame
    keeps its int((1 - k) L) tokens least similar to its reference and drops the rest as temporally redundant.
    A dropped token is represented (``assignment``) by the token at its position in its reference frame when
    that one is kept; features are never averaged (the release drops, it does not average), so nothing is
    ``merged``. ``segments`` are the windows.

    Parameters: retention=0.1; k=0.7 (pruning rate K of the compared frames; the release's lmms-eval default
    ``dycoke_k`` used by its eval.sh). Source: the paper's Sec. 3.2 (TTM) and the release, KD-TAO/DyCoke
    llava/model/llava_arch.py ``dycole_ttm``. Its second stage (dynamic KV-cache pruning during decoding) needs
    the LLM's attention and has no pre-LLM counterpart.

    Departures (ours): TTM's rate is fixed and reference frames stay whole, so it keeps ~47% of the tokens at
    k=0.7 and at least a quarter at any k. ``retention`` is a cap: if TTM keeps more than round(r T L), every
    frame's TTM count is scaled down in proportion (reference frames still keep ~1/(1-k) times as many as the
    others) so that exactly that many remain; compared frames keep their least-similar tokens as before, and
    reference frames their most salient ones (the given saliency, else the feature-only score, reported in
    ``info["saliency"]``; "unused" when TTM alone fits) since they have no reference to be redundant against.
    If TTM keeps fewer, its output stands (at most the budget). Every window, the last included, is treated
    alike: the release's loops skip the third frame of the last full window and drop an odd last frame.
    """

    def __init__(self, retention: float = 0.1, **opts) -> None:
        no_options("dycoke", opts, DEFAULTS)
        self.retention = check_retention(retention)
        self.k = float(opts.get("k", DEFAULTS["k"]))
        if not 0.0 <= self.k <= 1.0:
            raise ValueError(f"k (pruning rate of the compared frames) must be in [0, 1], got {self.k}")

    def __call__(self, vt: VideoTokens) -> Pruned:
        feats = vt.features
        T, L, _ = feats.shape
        dev = feats.device
        t = torch.arange(T, device=dev)
        off = t % WINDOW
        is_ref = off == 0
        ref = torch.where(off == 2, t - 2, t - 1).clamp(min=0)  # f1 -> f0, f2 -> f0, f3 -> f2; f0: unused

        # Similarity of each compared frame with its reference: consecutive pairs cover f1 and f3; f2 vs f0 apart.
        nxt, norms = consecutive_similarity(feats)
        sim = torch.zeros(T, L, device=dev)
        adj = (off == 1) | (off == 3)
        sim[adj] = nxt[t[adj] - 1]
        two = (off == 2).nonzero().flatten()
        if two.numel():
            dot = torch.linalg.vecdot(feats[two].float(), feats[two - 2].float())
            sim[two] = dot / (norms[two] * norms[two - 2]).clamp_min(1e-12)

        budget = exact_count(self.retention, T * L)
        ttm = torch.full((T,), int((1 - self.k) * L), dtype=torch.long, device=dev)
        ttm[is_ref] = L
        fallback = int(ttm.sum()) > budget
        counts = apportion(budget, ttm) if fallback else ttm
        score = -sim  # compared frames keep their least similar tokens
        source = "unused"
        if fallback:
            sal, source = saliency_of(vt)
            score = torch.where(is_ref[:, None], sal, score)
        index = topk_per_frame(score, counts)

        row = torch.full((T * L,), -1, dtype=torch.long, device=dev)
        row[index] = torch.arange(index.numel(), device=dev)
        at_ref = (ref[:, None] * L + torch.arange(L, device=dev)).flatten()
        dropped = (row < 0) & ~is_ref.repeat_interleave(L)
        assignment = row.clone()
        assignment[dropped] = row[at_ref[dropped]]  # -1 where the reference token is itself dropped
        sizes = [min(WINDOW, T - s) for s in range(0, T, WINDOW)]
        info = {"method": "dycoke", "saliency": source, "k": self.k, "budget": budget, "ttm_count": int(ttm.sum()),
                "scaled_to_budget": fallback, "reference_frames": int(is_ref.sum())}
        return finish(vt, index, assignment=assignment, segments=sizes, info=info)
