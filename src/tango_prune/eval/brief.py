"""Brief events: does a pruner keep an object that is on screen for only a few frames? (issue 27)

A probe on real content: real clip windows, one object composited into ``span`` consecutive frames (1, 2, 4) at a
known place, tokens from the real ViT-S at a chosen grid, every pruner run on the same tokens.

object tokens
    Tokens of the frames the object is in whose cell the object covers at least ``min_cover`` (0.25) of, from the
    pixel difference between the clip and its bare background pooled to the token grid.

survives
    Some kept row carries the object: either it is an object token kept with its own feature (``merged`` False), or
    at least half of the input tokens it represents (``Pruned.assignment``) are object tokens (a merged token
    dominated by the object; a static token that averages the object's one frame with 15 background frames is not).
    ``kept`` is the index-only version (an object token is among the kept indices, whatever its feature), the only
    one the authors' release can be scored on, since it returns kept indices alone.

cosine
    Mean, over the object tokens, of the cosine between the token and the kept feature that represents it (for a
    dropped token, the most similar kept feature anywhere), as ``fidelity.coverage`` does for all tokens.

This module never imports the testbed: the caller hands in a window function (clip backgrounds), shape masks and
colours (``cli.fidelity`` passes the testbed generator's).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..types import Pruned, VideoTokens

FRAMES, SIZE, OBJ = 16, 224, 64  # the testbed's clip: 16 frames of 224 px, 64 px objects


@dataclass(frozen=True)
class Grid:
    """How frames become tokens: ``image`` px frames through ViT-S/14, the patch grid average-pooled ``pool`` x ``pool``
    (LLaVA-OV's 2 x 2 bilinear pooling of an even grid is this average)."""

    image: int
    pool: int

    @property
    def side(self) -> int:
        return self.image // 14 // self.pool


GRIDS = {"4x4": Grid(112, 2), "8x8": Grid(224, 2), "16x16": Grid(224, 1)}  # v2's, v1's, the tower's own


def grids_arg(text: str) -> list[str]:
    names = [g.strip() for g in text.split(",") if g.strip()]
    bad = [g for g in names if g not in GRIDS]
    if not names or bad:
        raise ValueError(f"--grids takes names from {', '.join(GRIDS)} (comma-separated), got {text!r}")
    return names


def spans_arg(text: str) -> list[int]:
    try:
        spans = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        spans = []
    if not spans or any(not 1 <= s <= FRAMES for s in spans):
        raise ValueError(f"--spans takes frame counts in [1, {FRAMES}], comma-separated (e.g. 1,2,4), got {text!r}")
    return spans


@dataclass
class Event:
    frames: np.ndarray  # (T, 224, 224, 3) uint8, with the object
    bare: np.ndarray  # the same window without it
    span: int
    first: int  # first frame the object is in
    shape: str


def draw_events(window: Callable, masks: dict, colours: dict, n: int, spans: list[int], seed: int = 0) -> list[Event]:
    """``n`` events per span. Event i of a span: a window ``window(rng, FRAMES)`` of a real clip, a shape of ``masks``
    (name -> (OBJ, OBJ) bool) in a colour of ``colours`` (name -> RGB) pasted at one random place (the testbed's
    range: 8 px from the border) into frames first .. first + span - 1. Deterministic in (seed, span, i)."""
    if n < 1:
        raise ValueError(f"--brief-n must be at least 1, got {n}")
    events = []
    for span in spans:
        for i in range(n):
            rng = np.random.default_rng([seed, span, i])
            bare = window(rng, FRAMES)
            shape = str(rng.choice(sorted(masks)))
            rgb = colours[str(rng.choice(sorted(colours)))]
            first = int(rng.integers(0, FRAMES - span + 1))
            top, left = (int(v) for v in rng.integers(8, SIZE - OBJ - 8, 2))
            frames = bare.copy()
            region = frames[first : first + span, top : top + OBJ, left : left + OBJ]
            region[:, masks[shape]] = rgb  # the same mask in every object frame
            events.append(Event(frames, bare, span, first, shape))
    return events


def object_tokens(frames: np.ndarray, bare: np.ndarray, side: int, min_cover: float = 0.25) -> Tensor:
    """(T * side * side,) bool: tokens whose cell of a side x side grid the object covers at least ``min_cover`` of,
    and in every frame the object is in, its most covered cell (a 64 px object split over four 56 px cells can
    cover each less than a quarter)."""
    diff = torch.from_numpy(np.any(frames != bare, axis=-1)).float()[:, None]  # (T, 1, H, W)
    cover = F.adaptive_avg_pool2d(diff, side).flatten(1)  # (T, side * side)
    best = cover == cover.max(dim=1, keepdim=True).values
    return ((cover >= min_cover) | (best & (cover > 0))).flatten()


def _vit_inputs(frames: Tensor, size: int) -> Tensor:
    from ..encoders.vit_s import MEAN, STD

    x = frames.permute(0, 3, 1, 2).float().div(255)
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@torch.no_grad()
def encode(model, frames: np.ndarray, grid: Grid, batch: int = 16) -> VideoTokens:
    """(T, H, W, 3) uint8 -> VideoTokens at ``grid``: ViT-S final-layernorm patch tokens and last-layer CLS attention
    (as ``encoders.vit_s.encode``, which is fixed at 224 px), both pooled; timestamps 0.5 s apart (the testbed's)."""
    x = _vit_inputs(torch.from_numpy(frames), grid.image)
    side = grid.image // 14
    heads = model.config.num_attention_heads
    last = model.encoder.layer[-1]
    feats, sal = [], []
    for s in range(0, x.shape[0], batch):
        out = model(pixel_values=x[s : s + batch], output_hidden_states=True)
        feats.append(out.last_hidden_state[:, 1:])
        h = last.norm1(out.hidden_states[-2])
        q = last.attention.q_proj(h[:, :1]).unflatten(-1, (heads, -1)).transpose(1, 2)
        k = last.attention.k_proj(h).unflatten(-1, (heads, -1)).transpose(1, 2)
        sal.append(torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)[:, :, 0, 1:].mean(dim=1))
    f, a = torch.cat(feats), torch.cat(sal)
    T, D = f.shape[0], f.shape[-1]
    f = F.avg_pool2d(f.view(T, side, side, D).permute(0, 3, 1, 2), grid.pool).flatten(2).transpose(1, 2)
    a = F.avg_pool2d(a.view(T, 1, side, side), grid.pool).flatten(1)
    g = grid.side
    return VideoTokens(f.contiguous(), a.contiguous(), (T, g, g), torch.arange(T, dtype=torch.float32) * 0.5)


def survival(features: Tensor, out: Pruned, obj: Tensor) -> dict:
    """Did the object survive ``out``? ``features`` (N, D) are the input tokens, ``obj`` (N,) bool the object tokens.
    Returns survived / kept (bools, see the module docstring) and the object tokens' mean cosine to their
    representative ("cosine")."""
    if obj.dtype != torch.bool or obj.shape != (features.shape[0],):
        raise ValueError(f"obj must be a bool mask of the {features.shape[0]} input tokens, got {obj.dtype} {tuple(obj.shape)}")
    if not obj.any():
        raise ValueError("obj marks no token: the event has no object token at this grid (lower min_cover)")
    a = out.assignment
    K = out.num_kept
    has = a >= 0
    size = torch.bincount(a[has], minlength=K)
    hits = torch.bincount(a[has & obj], minlength=K)
    own = obj[out.index] & ~out.merged  # an object token kept with its own feature
    dominated = 2 * hits >= size.clamp_min(1)  # at least half of what the row stands for is the object
    dominated &= hits > 0
    kx = F.normalize(out.features.float(), dim=-1)
    x = F.normalize(features[obj].float(), dim=-1)
    rows = a[obj]
    cos = torch.where(rows >= 0, (x * kx[rows.clamp_min(0)]).sum(-1), (x @ kx.T).max(dim=1).values)
    return {"survived": bool((own | dominated).any()), "kept": bool(obj[out.index].any()), "cosine": float(cos.mean())}


def kept_only(index: Tensor, obj: Tensor) -> bool:
    """The index-only criterion, for pruners that return kept indices alone (the release)."""
    return bool(obj[index].any())


def tango_diagnosis(vt: VideoTokens, obj: Tensor, cfg) -> dict:
    """Where Tango's segmentation puts the object (from the same core functions Tango runs): whether the event sits
    in a segment longer than itself, and whether an object position is static there (collapsed into one mean token
    over the whole segment)."""
    from ..core.segment import consecutive_similarity
    from ..core.tango import static_positions
    from ..pruner import segment_video

    T, L, _ = vt.features.shape
    tok_sim, _ = consecutive_similarity(vt.features)
    sizes = segment_video(vt, cfg, tok_sim)
    statics = static_positions(tok_sim, sizes, cfg.static_tau) if cfg.static_merge else [None] * len(sizes)
    o = obj.view(T, L)
    frames = o.any(dim=1).nonzero().flatten()
    starts = torch.tensor([0] + sizes[:-1]).cumsum(0)
    seg = torch.bucketize(frames, starts, right=True) - 1
    longer = bool((torch.tensor(sizes)[seg] > frames.numel()).any())
    static = any(bool((statics[s] & o[f]).any()) for s, f in zip(seg.tolist(), frames.tolist()) if statics[s] is not None)
    return {"longer_segment": longer, "static": static, "segments": len(sizes)}


# Tango's ablation switches and the equal-count variants the probe runs by default, besides every registry method
SWITCHES = ("tango:budget=exact,tango:segment=fastvid,tango:segment=none,tango:static_merge=off,tango:strope=off,"
            "tango:context_ratio=0,tango:brief_frames=1,tango:brief_frames=1:budget=exact,holitom:budget=exact,"
            "vidcom2:floor=exact,evs:floor=exact")


def probe(model, events: list[Event], grids: list[str], methods: list[tuple[str, str, dict]], retention: float,
          release: Callable | None = None, progress: bool = False) -> list[dict]:
    """One row per (grid, method label, span): survival / kept rates and the object's mean cosine over the events,
    and the mean kept count. ``release`` (``bench.release.load_release``'s function) adds a "release" row scored on
    its kept indices, and its agreement with ours (``tango:merge_placement=release``, same indices by design)."""
    from tqdm import tqdm

    from ..config import TangoConfig
    from ..methods import get_method

    jobs = [(label, get_method(name)(retention=retention, **opts)) for label, name, opts in methods]
    cfg = TangoConfig.release(retention=retention)
    acc: dict = {}

    def add(key, **vals):
        row = acc.setdefault(key, {})
        for k, v in vals.items():
            row.setdefault(k, []).append(float(v))

    for g in grids:
        grid = GRIDS[g]
        for e in tqdm(events, desc=f"brief {g}", disable=not progress):
            vt = encode(model, e.frames, grid)
            obj = object_tokens(e.frames, e.bare, grid.side)
            flat = vt.features.reshape(vt.num_tokens, -1)
            for label, pruner in jobs:
                out = pruner(vt)
                add((g, label, e.span), **survival(flat, out, obj), tokens=out.num_kept)
            d = tango_diagnosis(vt, obj, cfg)
            add((g, "tango: object position static", e.span), survived=d["static"], tokens=0)
            if release is not None:
                ours = get_method("tango")(retention=retention, merge_placement="release")(vt).index
                theirs = release(vt, cfg).to(ours.device)
                same = bool(torch.equal(torch.sort(ours).values, torch.sort(theirs).values))
                add((g, "release", e.span), kept=kept_only(theirs, obj), tokens=theirs.numel(), identical=same)
    rows = []
    for (g, label, span), vals in acc.items():
        rows.append({"grid": g, "method": label, "span": span, "events": len(vals["tokens"]),
                     **{k: sum(v) / len(v) for k, v in vals.items()}})
    return rows


def format_probe(rows: list[dict], key: str = "survived") -> str:
    """A table: one line per method, one column per (grid, span), values ``key`` (a rate over events)."""
    cols = sorted({(r["grid"], r["span"]) for r in rows}, key=lambda c: (list(GRIDS).index(c[0]), c[1]))
    labels = list(dict.fromkeys(r["method"] for r in rows))
    table = {(r["method"], r["grid"], r["span"]): r for r in rows}
    head = f"{'method':<34}" + "".join(f"{g + ' ' + str(s) + 'f':>11}" for g, s in cols) + f"{'kept':>7}"
    lines = [head, "-" * len(head)]
    for m in labels:
        cells, kept = [], []
        for g, s in cols:
            r = table.get((m, g, s))
            v = None if r is None else r.get(key)
            cells.append(f"{'-' if v is None else f'{v:.2f}':>11}")
            if r is not None and r["tokens"]:
                kept.append(r["tokens"] / (16 * GRIDS[g].side ** 2))
        lines.append(f"{m:<34}" + "".join(cells) + (f"{sum(kept) / len(kept):>7.1%}" if kept else f"{'':>7}"))
    return "\n".join(lines)
