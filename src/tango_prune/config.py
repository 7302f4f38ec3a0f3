"""Tango's parameters. Every default is the authors' release's (SPEC-tango.md)."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence, Union

# Attention-sink positions the release masks, per model family and pooled grid.
SINKS = {
    "llava-ov": (11, 12, 27, 28, 41, 169),  # 14x14 grid
    "llava-video": (11, 26, 157),  # 13x13 grid
    "qwen2.5-vl": (),
}

SinkSpec = Union[Sequence[int], str]

_CHOICES = {
    "segment": ("holitom", "fastvid", "none"),
    "budget": ("reference", "exact"),
    "merge_placement": ("anchor", "release"),
    "similarity": ("exact", "fast"),
    "selection": ("diverse", "topk"),
}


@dataclass(frozen=True)
class TangoConfig:
    """Configuration of the Tango pruner.

    retention:        share of the video's tokens to keep, in (0, 1].
    segment:          temporal segmentation: "holitom" (DP maximising static
                      tokens), "fastvid" (cuts at low frame similarity) or "none".
    segment_tau:      similarity threshold for segmentation; None = the release's
                      choice, 0.65 at retention <= 0.10 and 0.80 above.
    static_tau:       a position is static in a segment when every consecutive
                      pair of its tokens has cosine similarity above this.
    context_ratio:    share of each frame's budget spent on merged context tokens.
    alpha:            candidate expansion of the salient selection.
    beta:             floor on an anchor's own weight when merging.
    k_neighbors:      neighbours for DPC-kNN density.
    base_time, base_space: ST-RoPE bases for the time and the two space axes.
    strope_section:   channels for (t, h, w); None = three near-equal even parts,
                      time first (3584 -> 1196/1194/1194).
    sink_indices:     per-frame positions whose saliency is zeroed: a sequence of
                      ints, a model name from ``SINKS`` ("llava-ov",
                      "llava-video", "qwen2.5-vl") or "auto" (outlier positions).
    budget:           "reference" keeps what the release keeps; "exact" keeps
                      exactly max(1, round(retention * T * L)) tokens.
    merge_placement:  "anchor" writes each merged context feature to its own
                      anchor; "release" reproduces the release, which writes the
                      merged features of a segment's anchors in density-rank
                      order onto anchors listed in position order (see README).
    similarity:       "exact" (float32 distances) or "fast" (bfloat16 rotated
                      features and Gram matrices; kept sets agree closely, see README).
    max_segment_frames: longest segment holitom may form (the release: 1024).
    merge_window_frames: None (the release) merges a segment's dynamic context
                      over the whole segment at once, a distance product over
                      every pair of its tokens: quadratic in the segment's
                      length (a 256-frame segment with nothing static: ~28 s on
                      a 2-core CPU). An int W merges it W frames at a time
                      (same anchors per frame; static positions, salient
                      tokens and segments unchanged), linear in the length.
    strope:           ablation: False uses plain cosine geometry (no rotation).
    selection:        ablation: "diverse" (Tango) or "topk" (saliency top-k).
    static_merge:     ablation: False treats every position as dynamic.
    fastvid_cuts:     fastvid's c: the c - 1 lowest-similarity boundaries are cut.
    block_tokens:     rows per block of any distance matrix: memory is bounded by
                      block_tokens x (tokens in the segment) floats.
    brief_frames:     keep brief events, not in the release (issue 27); 0 = off
                      (the release). When > 0, a token whose content differs from
                      the frame before while the frame at most brief_frames later
                      looks like the frame before again (``core.events``) is kept
                      with its own feature in addition to the budget (at most
                      ceil(L x retention) per frame; with budget="exact" the count
                      stays exact and the lowest-saliency unmerged tokens make room).
    brief_tau:        score a token needs to count as a brief event's onset:
                      cos(before, after) - cos(onset, before), in [-2, 2].
    """

    retention: float = 0.1
    segment: str = "holitom"
    segment_tau: float | None = None
    static_tau: float = 0.8
    context_ratio: float = 0.4
    alpha: float = 1.5
    beta: float = 0.6
    k_neighbors: int = 7
    base_time: float = 10000.0
    base_space: float = 1000.0
    strope_section: tuple[int, int, int] | None = None
    sink_indices: SinkSpec = ()
    budget: str = "reference"
    merge_placement: str = "anchor"
    similarity: str = "exact"
    max_segment_frames: int = 1024
    merge_window_frames: int | None = None
    strope: bool = True
    selection: str = "diverse"
    static_merge: bool = True
    fastvid_cuts: int = 8
    block_tokens: int = 4096
    brief_frames: int = 0
    brief_tau: float = 0.5

    def __post_init__(self) -> None:
        r = self.retention
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not (0.0 < float(r) <= 1.0):
            raise ValueError(f"retention must be in (0, 1], got {r!r}; e.g. retention=0.1 keeps 10% of the tokens")
        for name, options in _CHOICES.items():
            if getattr(self, name) not in options:
                raise ValueError(f"{name} must be one of {options}, got {getattr(self, name)!r}")
        for name in ("static_tau", "context_ratio", "beta"):
            v = getattr(self, name)
            lo = -1.0 if name == "static_tau" else 0.0
            if not (lo <= float(v) <= 1.0):
                raise ValueError(f"{name} must be in [{lo:g}, 1], got {v!r}")
        if self.segment_tau is not None and not (-1.0 <= float(self.segment_tau) <= 1.0):
            raise ValueError(f"segment_tau must be a cosine similarity in [-1, 1] or None, got {self.segment_tau!r}")
        bf = self.brief_frames
        if isinstance(bf, bool) or not isinstance(bf, int) or bf < 0:
            raise ValueError(f"brief_frames must be an int >= 0 (0 = off, the release; 2 = events of 1-2 frames), got {bf!r}")
        bt = self.brief_tau
        if isinstance(bt, bool) or not isinstance(bt, (int, float)) or not -2.0 <= float(bt) <= 2.0:
            raise ValueError(f"brief_tau must be a number in [-2, 2] (a difference of two cosines), got {bt!r}")
        if float(self.alpha) < 1.0:
            raise ValueError(f"alpha must be >= 1 (it widens the candidate set), got {self.alpha!r}")
        mw = self.merge_window_frames
        if mw is not None and (isinstance(mw, bool) or not isinstance(mw, int) or mw < 1):
            raise ValueError(f"merge_window_frames must be None (the release: the whole segment) or an int >= 1, "
                             f"got {mw!r}")
        for name in ("k_neighbors", "max_segment_frames", "fastvid_cuts", "block_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("base_time", "base_space"):
            if not float(getattr(self, name)) > 1.0:
                raise ValueError(f"{name} must be > 1 (a RoPE base), got {getattr(self, name)!r}")
        sec = self.strope_section
        if sec is not None:
            sec = tuple(int(s) for s in sec)
            if len(sec) != 3 or any(s < 0 or s % 2 for s in sec):
                raise ValueError(f"strope_section must be three even non-negative ints (t, h, w), got {self.strope_section!r}")
            object.__setattr__(self, "strope_section", sec)
        sinks = self.sink_indices
        if isinstance(sinks, str):
            if sinks != "auto" and sinks not in SINKS:
                raise ValueError(f"sink_indices must be a list of positions, 'auto' or one of {sorted(SINKS)}, got {sinks!r}")
        else:
            try:
                sinks = tuple(int(i) for i in sinks)
            except (TypeError, ValueError):
                raise ValueError(f"sink_indices must be a sequence of ints, got {self.sink_indices!r}") from None
            if any(i < 0 for i in sinks):
                raise ValueError(f"sink_indices must be non-negative positions within a frame, got {sinks}")
            object.__setattr__(self, "sink_indices", sinks)

    @property
    def resolved_segment_tau(self) -> float:
        if self.segment_tau is not None:
            return float(self.segment_tau)
        return 0.65 if self.retention <= 0.10 + 1e-12 else 0.80

    def replace(self, **changes) -> "TangoConfig":
        return replace(self, **changes)

    @classmethod
    def release(cls, **overrides) -> "TangoConfig":
        """The authors' release, bit for bit: reference budget and its merge placement."""
        base = dict(budget="reference", merge_placement="release")
        base.update(overrides)
        return cls(**base)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
