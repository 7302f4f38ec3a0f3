"""FastVID (Shen et al., arXiv 2503.11187, NeurIPS 2025): DySeg segmentation, then STPrune (ATS + DTM)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core.density import dpc_knn
from ..core.segment import fastvid_segments, frame_similarity
from ..types import Pruned, VideoTokens
from .registry import register
from .common import check_retention, exact_count, finish, frame_budgets, no_options, saliency_of, topk_per_frame

DEFAULTS = {"c": 8, "tau": 0.9, "d": 0.4, "p": 4, "k": 4, "beta": 0.6}


def anchor_frames(n: int, ctx: int, m: int, p: int) -> list[int]:
    """A segment's anchor frames (local indices): its last frame and every p-th before it, as the release lays
    them out. The interval only shrinks when ``ctx`` anchors would not fit ``m`` per anchor frame (r > ~0.45)."""
    if ctx == 0:
        return []
    while p > 1 and math.ceil(n / p) * m < ctx:
        p -= 1
    return list(range(n - 1, -1, -p))[::-1]


@register("fastvid")
class FastVID:
    """FastVID: DySeg temporal segmentation, then STPrune = ATS (saliency) + DTM (density merging) per segment.

    1. DySeg: cosine similarity of consecutive frame descriptors (``frame_features``, else each frame's mean
       token); cut at the c-1 lowest boundaries and wherever similarity < tau.
    2. Budget: exactly round(r T L) tokens, spread evenly over frames (n_t each, base = floor(mean)).
       ATS keeps the S = base - floor(d base) most salient tokens of every frame, unmerged.
    3. DTM: a segment's n_t - S left per frame are pooled and shared out evenly among its anchor frames (the
       last and every p-th before it). Each anchor frame's anchors are its top DPC-kNN density-peak tokens among
       its non-ATS tokens (distances / sqrt(D); density exp(-mean d^2 over the k nearest, itself included)).
       Every non-ATS token of the segment joins its most cosine-similar anchor in *each* anchor frame; an anchor
       with n members (itself included) and their mean m becomes w anchor + (1 - w) m, w = max(beta, 1/(n+1)).
       ``assignment`` names the anchor of highest cosine over all the segment's anchors.

    Source: arXiv 2503.11187 Sec. 3 (DySeg; STPrune = DTM + ATS) and its release, LunarShen/FastVID
    fastvid_llavaonevision/LLaVA-NeXT/llava/model/language_model/modeling_qwen2.py (the "parallel" density
    version: densities within each frame), whose STPrune we reproduce token for token where budgets agree.
    Parameters (defaults: the release's fastvid_llavaonevision/scripts/eval.sh): retention=0.1;
    c=8 (DySeg_c, minimum number of segments); tau=0.9 (DySeg_tau); d=0.4 (STPrune_d, DTM share of each
    frame's budget); p=4 (DTM_p, anchor-frame interval); k=4 (the release's topk k for density, the token
    itself counted); beta=0.6 (DTM_beta). Saliency: the given one (the release uses SigLIP's attention-pooling
    weights) or the feature-only fallback, reported in ``info["saliency"]``. Exact budget.

    Departures: the release gives every frame floor(r L) tokens and each anchor frame floor(ctx / #anchor
    frames) anchors, so it keeps up to T + #anchor frames fewer than r T L; we spend exactly round(r T L), the extra
    going to DTM anchors. No 1e-6 random density noise (deterministic ties). Anchors keep their own token in
    their own frame on exact cosine ties. When anchors would not fit in the anchor frames (high retention, where
    the release errors) the anchor interval shrinks. Frame descriptors default to the mean token (the release
    uses SigLIP's pooled output, pass it as ``frame_features``).
    """

    exact_budget = True

    def __init__(self, retention: float = 0.1, **opts) -> None:
        no_options("fastvid", opts, DEFAULTS)
        self.retention = check_retention(retention)
        o = {**DEFAULTS, **opts}
        self.c, self.tau, self.d, self.p, self.k, self.beta = (int(o["c"]), float(o["tau"]), float(o["d"]),
                                                                int(o["p"]), int(o["k"]), float(o["beta"]))
        if self.c < 1 or self.p < 1 or self.k < 2:
            raise ValueError(f"need c >= 1, p >= 1 and k >= 2, got c={self.c}, p={self.p}, k={self.k}")
        if not (0.0 <= self.d <= 1.0 and 0.0 <= self.beta <= 1.0):
            raise ValueError(f"d and beta must be in [0, 1], got d={self.d}, beta={self.beta}")

    def __call__(self, vt: VideoTokens) -> Pruned:
        feats = vt.features
        T, L, D = feats.shape
        dev = feats.device
        X = feats.reshape(T * L, D)
        sal, source = saliency_of(vt)
        g = vt.frame_features if vt.frame_features is not None else feats.mean(dim=1, dtype=torch.float32)
        sizes = fastvid_segments(frame_similarity(g), self.c, self.tau)

        budget = exact_count(self.retention, T * L)
        base = budget // T
        S = base - int(base * self.d)
        m = L - S
        ctx = (frame_budgets(budget, T) - S).tolist()
        salient = topk_per_frame(sal, torch.full((T,), S, dtype=torch.long, device=dev))
        rest_mask = torch.ones(T * L, dtype=torch.bool, device=dev)
        rest_mask[salient] = False
        rest = rest_mask.view(T, L).nonzero()[:, 1].view(T, m)  # each frame's non-ATS positions, ascending

        # Plan: anchor frames of every segment and their anchor counts, so one batched DPC covers them all.
        plan, frames, counts, a = [], [], [], 0
        for n in sizes:
            local = anchor_frames(n, sum(ctx[a : a + n]), m, self.p)
            plan.append((a, n, len(local)))
            frames += [a + i for i in local]
            counts += frame_budgets(sum(ctx[a : a + n]), len(local)).tolist() if local else []
            a += n
        rest_ids = (torch.arange(T, device=dev)[:, None] * L + rest).flatten()
        rows, feat_out, merged = [salient], [X[salient]], [torch.zeros(salient.numel(), dtype=torch.bool, device=dev)]
        owner = torch.full((T * L,), -1, dtype=torch.long, device=dev)
        owner[salient] = torch.arange(salient.numel(), device=dev)
        if frames:
            af = torch.tensor(frames, device=dev)
            cnt = torch.tensor(counts, device=dev)
            # The only float copy, scaled in place for DPC (merging undoes the scale: means are linear). The
            # release divides distances by sqrt(D); the extra sqrt((k-1)/k) turns dpc_knn's mean over k-1
            # neighbours into the release's mean over k (self at 0 included): rho * delta is only rescaled.
            scale = math.sqrt((self.k - 1) / self.k / D)
            xr = X[rest_ids].float().mul_(scale)
            inv = torch.linalg.vector_norm(xr, dim=-1).clamp_min(1e-30).reciprocal()
            x = xr.view(T, m, D)
            centres = dpc_knn(x if len(frames) == T else x[af], int(cnt.max()), self.k - 1)  # best first
            valid = torch.arange(centres.shape[1], device=dev)[None, :] < cnt[:, None]
            j, next_row = 0, salient.numel()
            for a, n, A in plan:
                if A:
                    seg = slice(a * m, (a + n) * m)
                    local = (af[j : j + A, None] - a) * m + centres[j : j + A]  # anchors' rows within the segment
                    new, mrg, row = self._merge(xr[seg], inv[seg], local, valid[j : j + A])
                    kept = rest_ids[seg][local[valid[j : j + A]]]
                    rows.append(kept)
                    feat_out.append(torch.where(mrg[:, None], new.div_(scale).to(X.dtype), X[kept]))
                    merged.append(mrg)
                    owner[rest_ids[seg]] = row + next_row
                    next_row += kept.numel()
                    j += A
        info = {"method": "fastvid", "saliency": source, "budget": budget, "salient_per_frame": S,
                "context_tokens": budget - S * T, "anchor_frames": len(frames)}
        return finish(vt, torch.cat(rows), features=torch.cat(feat_out), merged=torch.cat(merged), assignment=owner,
                      segments=list(sizes), info=info)

    def _merge(self, x: Tensor, inv: Tensor, anchors: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """DTM of one segment. x (M, D) float: its non-ATS tokens, inv (M,) their inverse norms; anchors (A, w):
        rows of x per anchor frame, real where ``valid``. Returns, in ``anchors[valid]`` order, the merged
        features and whether each absorbed anything besides itself; and per row of x its closest anchor."""
        A, w = anchors.shape
        dev = x.device
        flat_valid = valid.flatten()
        an = x[anchors.flatten()] * inv[anchors.flatten(), None]
        frame_of = torch.arange(A, device=dev).repeat_interleave(w)
        own = torch.full((x.shape[0],), -1, dtype=torch.long, device=dev)
        own[anchors[valid]] = flat_valid.nonzero().flatten()
        sums = torch.zeros(A * w, x.shape[1], device=dev)
        count = torch.zeros(A * w, dtype=torch.long, device=dev)
        best = torch.empty(x.shape[0], dtype=torch.long, device=dev)
        block = max(1, 2**22 // max(A * w, x.shape[1]))
        for s in range(0, x.shape[0], block):
            xb = x[s : s + block]
            sim = (xb @ an.T).mul_(inv[s : s + block, None]).masked_fill_(~flat_valid, float("-inf"))
            pick = sim.view(-1, A, w).argmax(dim=-1) + torch.arange(A, device=dev) * w  # per anchor frame
            top = sim.argmax(dim=-1)
            o = own[s : s + block]
            is_anchor = o >= 0
            pick[is_anchor, frame_of[o[is_anchor]]] = o[is_anchor]  # an anchor always joins itself
            top[is_anchor] = o[is_anchor]
            for a in range(A):  # each anchor frame absorbs the whole segment, as in the release
                sums.index_add_(0, pick[:, a], xb)
            count += torch.bincount(pick.flatten(), minlength=A * w)
            best[s : s + block] = top
        c = count[flat_valid].unsqueeze(1).float()
        wgt = (1.0 / (c + 1.0)).clamp(min=self.beta)
        new = wgt * x[anchors[valid]] + (1.0 - wgt) * sums[flat_valid] / c.clamp(min=1.0)
        return new, c.squeeze(1) > 1, (torch.cumsum(flat_valid.long(), 0) - 1)[best]
