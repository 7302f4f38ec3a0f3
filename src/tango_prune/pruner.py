"""prune_video_tokens: Tango over one video, from VideoTokens to Pruned."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import SINKS, TangoConfig
from .core.budget import exact_count, fit_budget, keep_also
from .core.events import brief_scores, brief_tokens
from .core.saliency import auto_sinks, feature_saliency, mask_sinks
from .core.segment import consecutive_similarity, fastvid_segments, frame_similarity, holitom_segments
from .core.strope import resolve_section
from .core.tango import Geometry, Pieces, prune_segment, prune_single_frames, static_positions
from .types import Pruned, VideoTokens, positions_of

def prepare_saliency(vt: VideoTokens, cfg: TangoConfig) -> tuple[Tensor, str, list[int]]:
    """Saliency (T, L) float32 with sinks zeroed, where it came from, and the sinks used."""
    if vt.saliency is None:
        sal, source = feature_saliency(vt.features), "feature-distinctiveness"
    else:
        sal, source = vt.saliency.float(), "given"
    spec = cfg.sink_indices
    if spec == "auto":
        sinks = auto_sinks(sal) if vt.saliency is not None else []
    elif isinstance(spec, str):
        sinks = list(SINKS[spec])
    else:
        sinks = list(spec)
    return mask_sinks(sal, sinks), source, sinks


def segment_video(vt: VideoTokens, cfg: TangoConfig, tok_sim: Tensor | None) -> list[int]:
    return segment_frames(vt.features, vt.frame_features, cfg, tok_sim)


def segment_frames(features: Tensor, frame_features: Tensor | None, cfg: TangoConfig, tok_sim: Tensor | None) -> list[int]:
    """Segment sizes of frames (T, L, D) under ``cfg.segment`` (``tok_sim``: their consecutive similarities)."""
    tau = cfg.resolved_segment_tau
    if cfg.segment == "holitom":
        return holitom_segments(tok_sim, tau, cfg.max_segment_frames)
    if cfg.segment == "fastvid":
        g = frame_features
        if g is None:  # the release's fastvid metric for LLaVA: each frame's mean token
            g = torch.cat([c.float().mean(dim=1) for c in features.split(16)])
        return fastvid_segments(frame_similarity(g), cfg.fastvid_cuts, tau)
    return [features.shape[0]]


def geometry(cfg: TangoConfig, dim: int, width: int) -> Geometry:
    """How this config turns (dim)-wide tokens of a frame ``width`` positions wide into the vectors it compares."""
    section = resolve_section(dim, cfg.strope_section) if cfg.strope else None
    return Geometry(width, section, cfg.base_time, cfg.base_space, cfg.strope,
                    torch.bfloat16 if cfg.similarity == "fast" else torch.float32)


def prune_segments(
    feats: Tensor, norms: Tensor, times: Tensor, sal: Tensor, tok_sim: Tensor, sizes: list[int], cfg: TangoConfig,
    geo: Geometry,
) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], list[int]]:
    """SPEC steps 3-5 over frames already cut into segments ``sizes``: (index, features, merged, owner) over these
    frames' T * L tokens, and each segment's number of static positions."""
    T, L, _ = feats.shape
    if cfg.static_merge and T > 1:
        statics = static_positions(tok_sim, sizes, cfg.static_tau)
        n_static = torch.stack([s.sum() for s in statics]).tolist()  # one host sync for all segments
    else:
        statics, n_static = [None] * len(sizes), [0] * len(sizes)
    pieces = Pieces(T * L, feats.device)
    a, singles = 0, []
    for n, static, ns in zip(sizes, statics, n_static):
        if n == 1:  # runs of one-frame segments go through in batches (prune_frames)
            singles.append(a)
        else:
            seg = feats[a : a + n]
            prune_segment(seg, norms[a : a + n], times[a : a + n], sal[a : a + n], static, ns, a * L, cfg, geo, pieces)
        a += n
    prune_single_frames(feats, norms, times, sal, singles, cfg, geo, pieces)
    return pieces.finish(), n_static


def prune_video_tokens(vt: VideoTokens, cfg: TangoConfig | None = None, **overrides) -> Pruned:
    """Tango (arXiv 2604.09547) on one video's tokens; see SPEC-tango.md and README.

    ``overrides`` are TangoConfig fields, e.g. ``prune_video_tokens(vt, retention=0.2)``.
    """
    if not isinstance(vt, VideoTokens):
        raise ValueError(f"vt must be a VideoTokens, got {type(vt).__name__}; wrap your tensors with VideoTokens(...)")
    cfg = (cfg or TangoConfig()).replace(**overrides) if overrides else (cfg or TangoConfig())
    feats = vt.features
    T, L, D = feats.shape
    W = vt.grid[2]
    sal, source, sinks = prepare_saliency(vt, cfg)
    times = vt.times()
    tok_sim, norms = consecutive_similarity(feats)
    sizes = segment_video(vt, cfg, tok_sim)
    if cfg.retention >= 1.0:
        # Keep-all is the identity. (The release would still collapse static positions at 1.0.)
        index = torch.arange(T * L, device=feats.device)
        info = {"method": "tango", "saliency": source, "sinks": sinks, "budget": cfg.budget, "identity": True}
        return Pruned(
            index, feats.reshape(T * L, D), positions_of(index, vt.grid), list(sizes),
            torch.zeros(T * L, dtype=torch.bool, device=feats.device), index.clone(), vt.grid, info,
        )
    geo = geometry(cfg, D, W)
    (index, out, merged, owner), n_static = prune_segments(feats, norms, times, sal, tok_sim, sizes, cfg, geo)
    reference_count = int(index.shape[0])
    rank = sal.flatten()
    brief = torch.empty(0, dtype=torch.long, device=feats.device)
    if cfg.brief_frames:
        score = brief_scores(feats, cfg.brief_frames, tok_sim)
        if sinks:
            score[:, list(sinks)] = float("-inf")
        brief = brief_tokens(score, cfg.brief_tau, math.ceil(L * cfg.retention))
        free = torch.ones(T * L, dtype=torch.bool, device=feats.device)
        free[index] = False
        brief = brief[free[brief]]
        index, out, merged, owner = keep_also(index, out, merged, owner, feats.reshape(T * L, D), brief)
        rank = rank.clone()
        rank[brief] = float("inf")  # an exact budget makes room elsewhere
    if cfg.budget == "exact":
        target = exact_count(cfg.retention, T * L)
        index, out, merged, owner = fit_budget(index, out, merged, owner, feats.reshape(T * L, D), rank, target)
    info = {
        "method": "tango",
        "saliency": source,
        "sinks": sinks,
        "budget": cfg.budget,
        "reference_count": reference_count,
        "static_positions": n_static,
        "similarity": cfg.similarity,
        "brief_added": int(brief.shape[0]),
    }
    return Pruned(index, out, positions_of(index, vt.grid), list(sizes), merged, owner, vt.grid, info)
