"""Tango over a video that arrives a chunk of frames at a time, holding only what is kept (issue 37).

A whole-video run holds every frame's features until it has segmented the video. ``TangoStream`` takes chunks
(``push``), segments what it holds (the frames of the still-open last segment, then the new chunk), prunes every
segment that the next frames can no longer change (all but the last) and keeps only their kept rows. Memory is one
chunk plus the open segment (at most ``max_carry`` frames), whatever the video's length.

Where it equals ``prune_video_tokens`` on the whole video, and where it cannot:
- Segments: the same wherever the whole video's cuts fall where the stream's do. The stream cuts a window's segments
  as holitom's programme cuts that window; the whole video's programme is global, so a cut can move when later
  frames change the best partition (measured in docs/benchmarks.md). An open segment longer than ``max_carry``
  frames is closed there.
- Each segment's pruning (static positions, ratio, selection, merging): local to the segment, so identical for an
  identical segment.
- ``budget="exact"``: the whole video adds or drops tokens by saliency anywhere in the video; the stream does so in
  each closed window, against a running target (round(retention x tokens seen so far)), so the total is the same
  exact count and the choice stays inside the window.
- ``sink_indices="auto"``: found on the first chunk (the whole video looks at every frame).
- ``brief_frames`` (not in the release) is not supported here.

Per-token tensors that ride along (Qwen3-VL's deepstack levels: ``push(chunk, extras=...)``) are carried over each
closed window as ``core.carry`` carries them over a whole video; ``stream.carried`` holds their kept rows.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .config import SINKS, TangoConfig
from .core.budget import exact_count, fit_budget
from .core.carry import carry
from .core.saliency import auto_sinks, feature_saliency, mask_sinks
from .core.segment import consecutive_similarity
from .pruner import geometry, prune_segments, segment_frames
from .types import Pruned, VideoTokens, positions_of


class TangoStream:
    """``push`` each chunk's VideoTokens in order (frames (t, L, D), saliency (t, L) or None, timestamps in seconds
    from the video's start), then ``finish()`` for the video's Pruned, as ``prune_video_tokens`` returns it."""

    def __init__(self, cfg: TangoConfig | None = None, max_carry: int = 256, **overrides) -> None:
        cfg = (cfg or TangoConfig()).replace(**overrides) if overrides else (cfg or TangoConfig())
        if cfg.brief_frames:
            raise ValueError("brief_frames is not supported when pruning chunk by chunk; set brief_frames=0")
        if max_carry < 1:
            raise ValueError(f"max_carry must be >= 1 frame, got {max_carry}")
        self.cfg, self.max_carry = cfg, max_carry
        self.held: tuple[Tensor, ...] | None = None  # features, saliency, times, extras of the open frames
        # the open frames' consecutive similarities (T_open - 1, L) and norms (T_open, L): a push computes only the
        # new frames' (and the pair across the boundary), not the whole open segment's again
        self.sim: Tensor | None = None
        self.norms: Tensor | None = None
        self.hw: tuple[int, int] | None = None
        self.sinks: list[int] | None = None
        self.source = ""
        self.done = 0  # frames closed
        self.kept = 0
        self.parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []  # closed windows' (index, features, merged, owner)
        self.sizes: list[int] = []
        self.n_static: list[int] = []
        self.n_extras: int | None = None
        self._carried: list[list[Tensor]] = []

    @property
    def carried(self) -> list[Tensor]:
        """Each extra's kept rows (K, D'), in ``finish()``'s order."""
        return [torch.cat(rows) for rows in self._carried]

    def push(self, chunk: VideoTokens, extras=()) -> None:
        """Add the next frames; ``extras``: per-token tensors (t * L, D') of these frames to carry along."""
        if not isinstance(chunk, VideoTokens):
            raise ValueError(f"push takes a VideoTokens chunk, got {type(chunk).__name__}")
        T, L, D = chunk.features.shape
        extras = [e.reshape(T, L, -1) if e.dim() == 2 and e.shape[0] == T * L else None for e in extras]
        if any(e is None for e in extras):
            raise ValueError(f"extras must be (t * L, D') = ({T * L}, D') tensors, one row per token of the chunk")
        if self.n_extras is None:
            self.n_extras = len(extras)
            self._carried = [[] for _ in extras]
        elif len(extras) != self.n_extras:
            raise ValueError(f"every chunk needs the same number of extras ({self.n_extras}), got {len(extras)}")
        if self.hw is None:
            self.hw = chunk.grid[1:]
        elif chunk.grid[1:] != self.hw:
            raise ValueError(f"every chunk needs the first chunk's frame grid {self.hw}, got {chunk.grid[1:]}")
        if chunk.timestamps is None:
            times = torch.arange(self.done + self._open(), self.done + self._open() + T, dtype=torch.float32)
        else:
            times = chunk.timestamps.float()
        sal = self._saliency(chunk)
        new = (chunk.features, sal, times.to(chunk.features.device), *extras)
        if self.held is None:
            self.sim, self.norms = consecutive_similarity(chunk.features)
            self.held = new
        else:  # the pairs from the last open frame on; each pair's value is the one the whole video computes
            sim, norms = consecutive_similarity(torch.cat([self.held[0][-1:], chunk.features]))
            self.sim, self.norms = torch.cat([self.sim, sim]), torch.cat([self.norms, norms[1:]])
            self.held = tuple(torch.cat([a, b]) for a, b in zip(self.held, new))
        self._close(final=False)

    def finish(self) -> Pruned:
        if self.held is None and not self.parts:
            raise ValueError("no frames were pushed; push at least one chunk before finish()")
        self._close(final=True)
        L = self.hw[0] * self.hw[1]
        grid = (self.done, *self.hw)
        shift_rows, shift_tokens = 0, 0
        index, feats, merged, owner = [], [], [], []
        for i, f, m, o in self.parts:
            index.append(i + shift_tokens)
            feats.append(f)
            merged.append(m)
            owner.append(torch.where(o >= 0, o + shift_rows, o))
            shift_rows += i.shape[0]
            shift_tokens += o.shape[0]
        index = torch.cat(index)
        info = {"method": "tango", "saliency": self.source, "sinks": self.sinks, "budget": self.cfg.budget,
                "static_positions": self.n_static, "similarity": self.cfg.similarity, "chunked": True,
                "max_carry": self.max_carry}
        return Pruned(index, torch.cat(feats), positions_of(index, grid), list(self.sizes), torch.cat(merged),
                      torch.cat(owner), grid, info)

    # -- inside --------------------------------------------------------------------------------------------------
    def _open(self) -> int:
        return 0 if self.held is None else self.held[0].shape[0]

    def _saliency(self, chunk: VideoTokens) -> Tensor:
        if chunk.saliency is None:
            sal, self.source = feature_saliency(chunk.features), "feature-distinctiveness"
        else:
            sal, self.source = chunk.saliency.float(), "given"
        if self.sinks is None:
            spec = self.cfg.sink_indices
            if spec == "auto":
                self.sinks = auto_sinks(sal) if chunk.saliency is not None else []
            else:
                self.sinks = list(SINKS[spec]) if isinstance(spec, str) else list(spec)
        return mask_sinks(sal, self.sinks)

    def _close(self, final: bool) -> None:
        """Prune every held segment the next frames cannot change (all of them when ``final``)."""
        if self.held is None:
            return
        feats, sal, times, *extras = self.held
        tok_sim, norms = self.sim, self.norms
        sizes = segment_frames(feats, None, self.cfg, tok_sim)
        if not final:
            sizes = sizes[:-1] if sizes[-1] <= self.max_carry else sizes  # the open segment waits for more frames
        n = sum(sizes)
        if n == 0:
            return
        T, L, D = feats.shape
        cfg = self.cfg
        if cfg.retention >= 1.0:
            idx = torch.arange(n * L, device=feats.device)
            part = (idx, feats[:n].reshape(n * L, D), torch.zeros(n * L, dtype=torch.bool, device=feats.device),
                    idx.clone())
            n_static = [0] * len(sizes)
        else:
            part, n_static = prune_segments(feats[:n], norms[:n], times[:n], sal[:n], tok_sim[: max(n - 1, 0)],
                                            sizes, cfg, geometry(cfg, D, self.hw[1]))
            if cfg.budget == "exact":  # the running target: the whole video's exact count once every frame is in
                target = exact_count(cfg.retention, (self.done + n) * L) - self.kept
                part = fit_budget(*part, feats[:n].reshape(n * L, D), sal[:n].flatten(), max(target, 0))
        self.parts.append(part)
        if extras:
            window = Pruned(part[0], part[1], part[0][:, None].expand(-1, 3), sizes, part[2], part[3], (n, *self.hw))
            for rows, e in zip(self._carried, extras):
                rows.append(carry(window, e[:n].reshape(n * L, -1)))
        self.kept += part[0].shape[0]
        self.sizes += sizes
        self.n_static += n_static
        self.done += n
        self.held = None if n == T else tuple(x[n:] for x in self.held)
        self.sim, self.norms = (None, None) if n == T else (tok_sim[n:], norms[n:])


def prune_video_stream(chunks, cfg: TangoConfig | None = None, max_carry: int = 256, **overrides) -> Pruned:
    """Tango over an iterable of VideoTokens chunks (a video's frames in order); see TangoStream."""
    stream = TangoStream(cfg, max_carry=max_carry, **overrides)
    for chunk in chunks:
        stream.push(chunk)
    return stream.finish()
