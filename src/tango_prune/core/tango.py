"""The Tango pipeline over one video: segments -> static/dynamic split -> selection + merging.

``prune_block`` handles N frames x P positions at one ratio; the static part of
a segment is a one-frame block of its collapsed positions, the dynamic part an
N-frame block, a one-frame segment a one-frame block.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ..config import TangoConfig
from .select import merge_context, merge_context_batched, salient_in_frames
from .strope import rotated_unit_features


class Block(NamedTuple):
    kept: Tensor  # (K,) flat indices into the block's N * P tokens
    features: Tensor  # (K, D)
    merged: Tensor  # (K,) bool
    owner: Tensor  # (N * P,) row of ``kept`` representing each token, -1 if none


def frame_budget(positions: int, ratio: float, context_ratio: float) -> tuple[int, int]:
    """Salient and context tokens per frame: n = ceil(P r) (at least 1), n_s = floor(n (1 - context ratio)).
    With n = 1 (a few dynamic positions, coarse grids) a frame keeps no salient token: its only token is a density
    vote, which an isolated brief object loses (docs/method.md, "Brief events")."""
    n = max(1, math.ceil(positions * ratio))
    n_sal = int(n * (1.0 - context_ratio))
    return n_sal, n - n_sal


def prune_block(
    features: Tensor, rot: Tensor, saliency: Tensor, ratio: float, cfg: TangoConfig, rows: Tensor | None = None,
) -> Block:
    """Keep ceil(P * ratio) tokens per frame of a block of N frames x P positions: salient ones plus merged context.

    ``features`` is the block (N, P, D), or, with ``rows`` (N * P,), a table
    (R, D) whose row rows[i] is the block's token i (no copy of the block).
    """
    N, P = saliency.shape
    D = features.shape[-1]
    dev = features.device
    n_sal, n_ctx = frame_budget(P, ratio, cfg.context_ratio)
    table = features.reshape(-1, D)

    def take(idx: Tensor) -> Tensor:
        return table[idx if rows is None else rows[idx]]

    rot_flat = rot.reshape(N * P, rot.shape[-1])
    base = torch.arange(N, device=dev).unsqueeze(1) * P

    kept = [torch.empty(0, dtype=torch.long, device=dev)]
    feats = [table[:0]]
    merged = [torch.zeros(0, dtype=torch.bool, device=dev)]
    owner = torch.full((N * P,), -1, dtype=torch.long, device=dev)
    rest = torch.ones(N * P, dtype=torch.bool, device=dev)
    if n_sal > 0:
        pos = salient_in_frames(
            rot, saliency, n_sal, alpha=cfg.alpha, k=cfg.k_neighbors,
            diverse=cfg.selection == "diverse", block_tokens=cfg.block_tokens,
        )
        sal_idx = (pos + base).flatten()  # groups are disjoint, so positions are unique per frame
        kept.append(sal_idx)
        feats.append(take(sal_idx))
        merged.append(torch.zeros(sal_idx.shape[0], dtype=torch.bool, device=dev))
        rest[sal_idx] = False
    if n_ctx > 0:
        pool = rest.nonzero().flatten()
        budget = n_ctx * N
        if pool.shape[0] <= budget:
            kept.append(pool)
            feats.append(take(pool))
            merged.append(torch.zeros(pool.shape[0], dtype=torch.bool, device=dev))
        elif pool.shape[0] > 0:
            m = merge_context(
                take(pool), rot_flat[pool], budget, beta=cfg.beta, k=cfg.k_neighbors, block_tokens=cfg.block_tokens,
            )
            # Row i of m.features belongs to anchor m.anchors[i]; the release writes it at m.rank_order[i].
            dest = m.anchors if cfg.merge_placement == "anchor" else m.rank_order
            start = sum(t.shape[0] for t in kept)
            kept.append(pool[dest])
            feats.append(m.features)
            merged.append((m.size > 1) | (dest != m.anchors))
            owner[pool] = start + m.group
    kept_t = torch.cat(kept)
    rows = torch.arange(kept_t.shape[0], device=dev)
    # Every kept token that is not a merged anchor represents itself.
    self_rep = owner[kept_t] < 0
    owner[kept_t[self_rep]] = rows[self_rep]
    return Block(kept_t, torch.cat(feats), torch.cat(merged), owner)


def prune_frames(features: Tensor, rot: Tensor, saliency: Tensor, ratio: float, cfg: TangoConfig) -> Block:
    """N one-frame segments (N, P, D) at once: what prune_block does to each frame alone, batched over frames
    (a video with no two similar frames is cut into one-frame segments; one call each costs more in overhead
    than in arithmetic)."""
    N, P = saliency.shape
    D = features.shape[-1]
    dev = features.device
    n_sal, n_ctx = frame_budget(P, ratio, cfg.context_ratio)
    base = torch.arange(N, device=dev).unsqueeze(1) * P
    if n_sal > 0:
        pos = salient_in_frames(
            rot, saliency, n_sal, alpha=cfg.alpha, k=cfg.k_neighbors,
            diverse=cfg.selection == "diverse", block_tokens=cfg.block_tokens,
        )
    else:
        pos = torch.empty(N, 0, dtype=torch.long, device=dev)
    rest = torch.ones(N, P, dtype=torch.bool, device=dev).scatter_(1, pos, False)
    pool = rest.nonzero()[:, 1].view(N, -1)  # every frame keeps the same number of salient tokens
    table = features.reshape(N * P, D)
    sal_idx = (pos + base).flatten()
    kept, feats = [sal_idx], [table[sal_idx]]
    merged = [torch.zeros(sal_idx.shape[0], dtype=torch.bool, device=dev)]
    owner = torch.full((N * P,), -1, dtype=torch.long, device=dev)
    if n_ctx > 0 and pool.shape[1] > 0:
        flat = (pool + base).flatten()
        if pool.shape[1] <= n_ctx:
            kept.append(flat)
            feats.append(table[flat])
            merged.append(torch.zeros(flat.shape[0], dtype=torch.bool, device=dev))
        else:
            # row gathers (index_select), not torch.gather over an expanded index: 10x faster on CPU at D = 3584
            rows_of = lambda x: x.reshape(N * P, -1).index_select(0, flat).view(N, -1, x.shape[-1])  # noqa: E731
            m = merge_context_batched(rows_of(features), rows_of(rot), n_ctx, beta=cfg.beta, k=cfg.k_neighbors,
                                      block_tokens=cfg.block_tokens)
            dest = m.anchors if cfg.merge_placement == "anchor" else m.rank_order
            kept.append(torch.gather(pool, 1, dest).add_(base).flatten())
            feats.append(m.features.reshape(-1, D))
            merged.append(((m.size > 1) | (dest != m.anchors)).flatten())
            first = sal_idx.shape[0] + torch.arange(N, device=dev).unsqueeze(1) * n_ctx
            owner[flat] = (first + m.group).flatten()
    kept_t = torch.cat(kept)
    rows = torch.arange(kept_t.shape[0], device=dev)
    self_rep = owner[kept_t] < 0
    owner[kept_t[self_rep]] = rows[self_rep]
    return Block(kept_t, torch.cat(feats), torch.cat(merged), owner)


def static_positions(tok_sim: Tensor, sizes: list[int], tau: float) -> list[Tensor]:
    """Per segment, the (L,) mask of positions similar above tau across all its frames."""
    masks, a = [], 0
    for n in sizes:
        if n > 1:
            masks.append((tok_sim[a : a + n - 1] > tau).all(dim=0))
        else:
            masks.append(torch.zeros(tok_sim.shape[1] if tok_sim.dim() == 2 else 0, dtype=torch.bool, device=tok_sim.device))
        a += n
    return masks


class Pieces:
    """Kept rows collected from blocks, with the owner map of the whole video."""

    def __init__(self, num_tokens: int, device) -> None:
        self.index: list[Tensor] = []
        self.features: list[Tensor] = []
        self.merged: list[Tensor] = []
        self.rows = 0
        self.owner = torch.full((num_tokens,), -1, dtype=torch.long, device=device)

    def add(self, block: Block, to_global: Tensor, owner_targets: Tensor | None = None) -> None:
        """Add a block; ``to_global`` maps its local token ids to video ids.

        ``owner_targets`` (n_targets, N*P) lists, for a collapsed static block,
        every video token each local token stands for.
        """
        self.index.append(to_global[block.kept])
        self.features.append(block.features)
        self.merged.append(block.merged)
        rows = torch.where(block.owner >= 0, block.owner + self.rows, block.owner)
        if owner_targets is None:
            self.owner[to_global] = rows
        else:
            self.owner[owner_targets] = rows.expand_as(owner_targets)
        self.rows += block.kept.shape[0]

    def finish(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        index = torch.cat(self.index)
        order = torch.argsort(index)
        new_row = torch.empty_like(order)
        new_row[order] = torch.arange(order.shape[0], device=order.device)
        owner = torch.where(self.owner >= 0, new_row[self.owner.clamp(min=0)], self.owner)
        return index[order], torch.cat(self.features)[order], torch.cat(self.merged)[order], owner


class Geometry(NamedTuple):
    """How token features become the vectors whose distances Tango compares."""

    width: int
    section: tuple[int, int, int] | None
    base_time: float
    base_space: float
    rotate: bool
    dtype: torch.dtype

    def vectors(self, features: Tensor, norms: Tensor, times: Tensor, positions: Tensor, select: bool = False) -> Tensor:
        return rotated_unit_features(
            features, self.width, times, self.section, self.base_time, self.base_space,
            positions=positions, select=select, rotate=self.rotate, norms=norms, out_dtype=self.dtype,
        )


def prune_segment(
    features: Tensor, norms: Tensor, times: Tensor, saliency: Tensor, static: Tensor | None, n_static: int,
    offset: int, cfg: TangoConfig, geo: Geometry, pieces: Pieces,
) -> None:
    """Prune one segment (N, L, D) starting at flat token ``offset`` (SPEC steps 3-5).

    Only the vectors a step compares are rotated: a static position's once, for
    the segment's first frame.
    """
    N, L, D = features.shape
    dev = features.device
    ids = torch.arange(N * L, device=dev) + offset
    windowed = cfg.merge_window_frames is not None and N > cfg.merge_window_frames
    if (N == 1 or n_static == 0) and not windowed:
        rot = geo.vectors(features, norms, times, torch.arange(L, device=dev))
        pieces.add(prune_block(features, rot, saliency, cfg.retention, cfg), ids)
        return
    if n_static == 0:  # every position dynamic, merged a window at a time
        every = torch.arange(L, device=dev)
        prune_dynamic(features, norms, times, saliency, every, ids.view(N, L), offset, cfg.retention, cfg, geo, pieces)
        return
    total = N * L
    ratio = min(cfg.retention / ((total - (N - 1) * n_static) / total), 1.0)
    grid_ids = ids.view(N, L)
    sp = static.nonzero().flatten()
    total = torch.zeros(sp.shape[0], D, dtype=torch.float32, device=dev)
    for frame in features:  # frame by frame: no (N, static, D) copy
        total += frame.index_select(0, sp)
    mean = (total / N).to(features.dtype)
    rot = geo.vectors(features[:1], norms[:1, sp], times[:1], sp, select=True)
    block = prune_block(mean.unsqueeze(0), rot, saliency[:, sp].mean(dim=0, keepdim=True), ratio, cfg)
    block = block._replace(merged=torch.ones_like(block.merged))  # static tokens carry the segment mean
    pieces.add(block, grid_ids[0, sp], owner_targets=grid_ids[:, sp])
    dp = (~static).nonzero().flatten()
    if dp.numel():
        prune_dynamic(features, norms, times, saliency, dp, grid_ids, offset, ratio, cfg, geo, pieces)


def prune_dynamic(
    features: Tensor, norms: Tensor, times: Tensor, saliency: Tensor, dp: Tensor, grid_ids: Tensor, offset: int,
    ratio: float, cfg: TangoConfig, geo: Geometry, pieces: Pieces,
) -> None:
    """A segment's dynamic positions ``dp`` over its N frames: one block (the release), or blocks of
    ``cfg.merge_window_frames`` frames, whose context merges stay inside them (selection is per frame either way)."""
    N = features.shape[0]
    step = N if cfg.merge_window_frames is None else cfg.merge_window_frames
    for a in range(0, N, step):
        b = min(N, a + step)
        rot = geo.vectors(features[a:b], norms[a:b, dp], times[a:b], dp, select=True)
        ids = grid_ids[a:b, dp]
        rows = (ids - offset).flatten()
        block = prune_block(features, rot, saliency[a:b, dp], ratio, cfg, rows=rows)
        pieces.add(block, ids.flatten())


def prune_single_frames(
    features: Tensor, norms: Tensor, times: Tensor, saliency: Tensor, frames: list[int], cfg: TangoConfig,
    geo: Geometry, pieces: Pieces, batch: int = 4,
) -> None:
    """The one-frame segments starting at ``frames`` of a (T, L, D) video, ``batch`` frames per call (4: fastest
    of 1/4/8/16/64 at 196 x 3584, 1.3x one per call; larger batches lose to page faults on fresh temporaries)."""
    L = features.shape[1]
    dev = features.device
    for s in range(0, len(frames), batch):
        f = torch.tensor(frames[s : s + batch], device=dev)
        x = features.index_select(0, f)
        rot = geo.vectors(x, norms.index_select(0, f), times.index_select(0, f), torch.arange(L, device=dev))
        block = prune_frames(x, rot, saliency.index_select(0, f), cfg.retention, cfg)
        pieces.add(block, (f.unsqueeze(1) * L + torch.arange(L, device=dev)).flatten())
