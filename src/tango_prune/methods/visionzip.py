"""VisionZip (Yang et al., arXiv 2412.04467, CVPR 2025): dominant tokens + merged contextual tokens, per frame."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..types import Pruned, VideoTokens
from .registry import register
from .common import check_retention, exact_count, finish, frame_budgets, no_options, saliency_of


@register("visionzip")
class VisionZip:
    """VisionZip, frame by frame.

    Each frame's budget k (round(r T L) spread evenly over frames) splits into round(k * dominant_ratio) dominant
    tokens, the frame's most salient (the paper: [CLS] attention), and k - dominant contextual tokens: of the
    remaining tokens, every (R // c)-th in reading order is a target; every other remaining token joins its most
    cosine-similar target, and a target becomes target + mean(its members) (the release adds the mean to the
    target rather than averaging them together; we keep that).

    Parameters: retention=0.1; dominant_ratio=54/64 (the paper's LLaVA-1.5 split: 54 dominant + 10 contextual of 64,
    likewise 108+20 and 162+30). Source: arXiv 2412.04467 Sec. 3.2 (dominant and contextual token selection) and its
    release (visionzip/utils.py). Departures: similarity on the features we are given (the paper uses the vision
    tower's keys, which a pre-LLM pruner does not see); the budget is exactly round(r T L), at least one dominant
    token in a frame with any budget; saliency falls back to the feature-only score when none is given (reported
    in ``info``).
    """

    exact_budget = True

    def __init__(self, retention: float = 0.1, dominant_ratio: float = 54 / 64, **opts) -> None:
        no_options("visionzip", opts)
        self.retention = check_retention(retention)
        if not 0.0 < dominant_ratio <= 1.0:
            raise ValueError(f"dominant_ratio must be in (0, 1], got {dominant_ratio}")
        self.dominant_ratio = float(dominant_ratio)

    def __call__(self, vt: VideoTokens) -> Pruned:
        T, L, D = vt.features.shape
        dev = vt.features.device
        sal, source = saliency_of(vt)
        counts = frame_budgets(exact_count(self.retention, T * L), T, device=dev)
        index, feats, merged = [], [], []
        assignment = torch.full((T * L,), -1, dtype=torch.long, device=dev)
        rows = 0
        for k in counts.unique().tolist():  # at most two distinct budgets: each group runs batched
            if k == 0:
                continue
            frames = (counts == k).nonzero().flatten()
            n = frames.numel()
            dom = min(k, max(1, round(k * self.dominant_ratio)))
            ctx = k - dom
            order = torch.argsort(sal[frames], dim=1, descending=True, stable=True)
            base = (frames * L)[:, None]
            d_idx = (base + order[:, :dom]).flatten()
            index.append(d_idx)
            feats.append(vt.features.reshape(T * L, D)[d_idx].float())
            merged.append(torch.zeros(d_idx.numel(), dtype=torch.bool, device=dev))
            assignment[d_idx] = rows + torch.arange(d_idx.numel(), device=dev)
            rows += d_idx.numel()
            if ctx == 0:
                continue
            rest = order[:, dom:].sort(dim=1).values  # remaining tokens in reading order, (n, R)
            R = rest.shape[1]
            step = max(1, R // ctx)
            is_target = torch.zeros(R, dtype=torch.bool, device=dev)
            is_target[torch.arange(0, R, step, device=dev)[:ctx]] = True
            tgt, oth = base + rest[:, is_target], base + rest[:, ~is_target]  # flat indices (n, ctx), (n, R - ctx)
            x = vt.features.reshape(T * L, D)
            t_f, o_f = x[tgt].float(), x[oth].float()
            join = torch.bmm(F.normalize(o_f, dim=-1), F.normalize(t_f, dim=-1).transpose(1, 2)).argmax(dim=-1)
            total = torch.zeros(n, ctx, D, device=dev).scatter_add_(1, join[..., None].expand(-1, -1, D), o_f)
            count = torch.zeros(n, ctx, device=dev).scatter_add_(1, join, torch.ones_like(join, dtype=torch.float))
            out = t_f + total / count.clamp(min=1)[..., None]
            index.append(tgt.flatten())
            feats.append(out.reshape(-1, D))
            merged.append((count > 0).flatten())
            target_rows = rows + torch.arange(n * ctx, device=dev).view(n, ctx)
            assignment[tgt.flatten()] = target_rows.flatten()
            assignment[oth.flatten()] = target_rows.gather(1, join).flatten()
            rows += n * ctx
        return finish(vt, torch.cat(index), features=torch.cat(feats), merged=torch.cat(merged),
                      assignment=assignment, info={"method": "visionzip", "saliency": source})
