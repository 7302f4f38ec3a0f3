"""HoliTom's outer-LLM stage (Shao et al., arXiv 2505.21334, NeurIPS 2025)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core.budget import fit_budget
from ..core.density import dpc_knn, nearest
from ..core.segment import consecutive_similarity, holitom_segments
from ..core.tango import static_positions
from ..types import Pruned, VideoTokens
from .registry import register
from .common import check_retention, exact_count, finish, no_options, saliency_of


def density_merge(x: Tensor, n_keep: int, beta: float, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """HoliTom's density merging of each row set of x (B, M, D) into n_keep tokens.

    DPC-kNN centres on distances scaled by 1/sqrt(D) (the scale changes rho * delta, so it matters);
    every other token joins its nearest centre; a centre with members becomes
    beta * centre + (1 - beta) * mean(members), one without stays itself.
    Returns centres (B, n_keep) sorted, their features (B, n_keep, D) float32, group (B, M).
    """
    B, M, D = x.shape
    xs = x.float() / math.sqrt(D)
    centres = dpc_knn(xs, n_keep, min(k, n_keep)).sort(dim=1).values
    ar = torch.arange(B, device=x.device)[:, None]
    group = nearest(xs, xs[ar, centres])
    group[ar.expand_as(centres), centres] = torch.arange(n_keep, device=x.device).expand(B, -1)
    is_centre = torch.zeros(B, M, dtype=torch.bool, device=x.device)
    is_centre[ar.expand_as(centres), centres] = True
    flat = (group + ar * n_keep).flatten()
    member = (~is_centre).flatten()
    total = torch.zeros(B * n_keep, D, device=x.device).index_add_(0, flat[member], x.reshape(B * M, D)[member].float())
    count = torch.bincount(flat[member], minlength=B * n_keep).view(B, n_keep, 1).float()
    own = x[ar, centres].float()
    mean = total.view(B, n_keep, D) / count.clamp(min=1)
    feats = torch.where(count > 0, beta * own + (1 - beta) * mean, own)
    return centres, feats, group


@register("holitom")
class HoliTom:
    """HoliTom, outer-LLM merging (its inner-LLM merging needs the LLM and is not a pre-LLM method).

    1. Segment the video with HoliTom's DP (the partition maximising static tokens, threshold ``tau``).
    2. In each segment, positions similar above ``tau`` across all its frames are static: averaged over
       the segment into one token each. The budget freed raises the ratio for the whole video:
       r' = min(1, r N / (N - removed)), removed = sum over segments of (frames - 1) * #static.
    3. Static tokens: round(r' #static) DPC-kNN centres, the rest merged into their nearest centre
       (placed in the segment's first frame).
    4. Dynamic tokens, per frame: ceil(r' #dynamic) kept; round(kept * (1 - contextual_ratio)) of
       them are the most salient (dominant); the rest are DPC-kNN centres of the remaining tokens, which
       are merged into them.

    Parameters (defaults: the authors' release, cokeshao/HoliTom holitom/llava_arch.py):
    retention=0.1; tau=0.8 (env T); beta=0.6 (BETA: centre weight when merging); k_neighbors=7 (K);
    contextual_ratio=0.0 (D: the release's default keeps dynamic tokens by saliency only);
    max_window=1024 (MAX_WINDOW_SIZE); budget="reference" (the release's count, which rounds up per
    frame) or "exact" (exactly round(r T L), as Tango's exact mode).
    Saliency: the given one (HoliTom uses the vision tower's attention) or the feature-only fallback.
    Departures: no random 1e-6 density noise (deterministic ties); a fully static segment keeps at least one token
    (at low r the release's round() can keep none of it); distances as the release's
    ``cdist / sqrt(D)``, computed blockwise.
    """

    def __init__(self, retention: float = 0.1, tau: float = 0.8, beta: float = 0.6, k_neighbors: int = 7,
                 contextual_ratio: float = 0.0, max_window: int = 1024, budget: str = "reference", **opts) -> None:
        no_options("holitom", opts)
        self.retention = check_retention(retention)
        if not 0.0 <= contextual_ratio <= 1.0:
            raise ValueError(f"contextual_ratio must be in [0, 1], got {contextual_ratio}")
        if budget not in ("reference", "exact"):
            raise ValueError(f"budget must be 'reference' or 'exact', got {budget!r}")
        if k_neighbors < 1 or max_window < 2:
            raise ValueError(f"k_neighbors must be >= 1 and max_window >= 2, got {k_neighbors}, {max_window}")
        self.tau, self.beta, self.k, self.ctx, self.max_window, self.budget = (
            tau, beta, int(k_neighbors), contextual_ratio, int(max_window), budget)

    def __call__(self, vt: VideoTokens) -> Pruned:
        feats = vt.features
        T, L, D = feats.shape
        dev = feats.device
        sal, source = saliency_of(vt)
        sim, _ = consecutive_similarity(feats)
        sizes = holitom_segments(sim, self.tau, self.max_window) if T > 1 else [1]
        statics = static_positions(sim, sizes, self.tau) if T > 1 else [torch.zeros(L, dtype=torch.bool, device=dev)]
        n_static = torch.stack([s.sum() for s in statics]).tolist()
        removed = sum((n - 1) * s for n, s in zip(sizes, n_static))
        r = min(self.retention * T * L / (T * L - removed), 1.0)
        idx, out, mrg, owner = [], [], [], torch.full((T * L,), -1, dtype=torch.long, device=dev)
        rows = 0

        def add(flat_kept: Tensor, f: Tensor, merged: Tensor, members: Tensor, member_rows: Tensor) -> None:
            nonlocal rows
            idx.append(flat_kept)
            out.append(f.reshape(-1, D))
            mrg.append(merged)
            owner[members] = member_rows + rows
            rows += flat_kept.numel()

        a = 0
        for n, static, ns in zip(sizes, statics, n_static):
            frames = torch.arange(a, a + n, device=dev)
            if ns and n > 1:
                pos = static.nonzero().flatten()
                keep = round(ns * r)
                if keep == 0 and ns == L:  # a fully static segment would vanish (the release returns nothing)
                    keep = 1
                if keep > 0:
                    mean = feats[a : a + n, pos].float().mean(dim=0, keepdim=True)
                    c, f, g = density_merge(mean, keep, self.beta, self.k)
                    members = (frames[:, None] * L + pos[None, :]).flatten()
                    add(a * L + pos[c[0]], f, torch.ones(keep, dtype=torch.bool, device=dev), members, g[0].repeat(n))
            dyn = (~static).nonzero().flatten() if ns and n > 1 else torch.arange(L, device=dev)
            m = dyn.numel()
            keep = min(m, math.ceil(m * r))
            dom = round(keep * (1 - self.ctx))
            flat = frames[:, None] * L + dyn[None, :]  # (n, m)
            order = torch.argsort(sal[a : a + n, dyn], dim=1, descending=True, stable=True)
            if dom:
                d_idx = flat.gather(1, order[:, :dom])
                add(d_idx.flatten(), feats.reshape(T * L, D)[d_idx.flatten()],
                    torch.zeros(d_idx.numel(), dtype=torch.bool, device=dev), d_idx.flatten(),
                    torch.arange(d_idx.numel(), device=dev))
            if keep - dom > 0:
                rest = flat.gather(1, order[:, dom:])  # (n, m - dom)
                c, f, g = density_merge(feats.reshape(T * L, D)[rest], keep - dom, self.beta, self.k)
                kept = rest.gather(1, c)
                member_rows = (g + torch.arange(n, device=dev)[:, None] * (keep - dom)).flatten()
                add(kept.flatten(), f, torch.ones(kept.numel(), dtype=torch.bool, device=dev), rest.flatten(), member_rows)
            a += n
        index = torch.cat(idx)
        features = torch.cat(out)
        merged = torch.cat(mrg)
        reference = index.numel()
        if self.budget == "exact":
            # fit_budget wants rows sorted by index; finish() re-sorts afterwards anyway
            order = torch.argsort(index)
            back = torch.empty_like(order)
            back[order] = torch.arange(order.numel(), device=dev)
            owner = torch.where(owner >= 0, back[owner.clamp(min=0)], owner)
            index, features, merged, owner = fit_budget(
                index[order], features[order], merged[order], owner, feats.reshape(T * L, D), sal.flatten(),
                exact_count(self.retention, T * L))
        info = {"method": "holitom", "saliency": source, "budget": self.budget, "reference_count": reference,
                "static_positions": n_static, "raised_ratio": r}
        return finish(vt, index, features=features, merged=merged, assignment=owner, segments=list(sizes), info=info)
