"""Testbed v2 clips: v1's generator (``testbed.data``: real backgrounds, composited shapes, the same five question
types, options in a fixed order per type, A-D) with a variable number of frames (8-16 by default) and several natural
phrasings per question type, so that a model trained on it must read time and place from a token's content and its
position rather than from one fixed layout.

Frames are composited at 224 px as in v1 (objects of 64 px); the v2 model resizes them to its own input size.
``make_sample(rng, bg, qtype, frames=16, phrasing=0)`` asks v1's template; sample i of ``generate(n, seed)`` depends
only on (seed, i) and the backgrounds.
"""
from __future__ import annotations

import numpy as np
import torch

from .data import COLOURS, cover_shares, DIRECTIONS, OBJ, OPTIONS, QUADRANTS, SHAPES, SIZE, TEMPLATES, TYPES, Backgrounds, Sample, _paste

MIN_FRAMES, MAX_FRAMES = 8, 16
# Per type: v1's template first (what `tango-prune eval` asks), then other phrasings seen in training.
PHRASINGS = {
    "brief_shape": (TEMPLATES["brief_shape"], "Something {colour} flashes on the screen briefly. Which shape is it?",
                    "For a moment a {colour} object is visible. What is its shape?"),
    "direction": (TEMPLATES["direction"], "In which direction is the {colour} {shape} moving?",
                  "The {colour} {shape} crosses the picture. Which way does it go?"),
    "count": (TEMPLATES["count"], "How often does the {colour} {shape} show up in the video?",
              "Count the appearances of the {colour} {shape}. How many are there?"),
    "order": (TEMPLATES["order"], "Two {colour} shapes show up in turn. Which one comes first?",
              "Which {colour} shape is seen first in the video?"),
    "location": (TEMPLATES["location"], "In which part of the frame is the {colour} {shape}?",
                 "Where is the {colour} {shape} placed in the picture?"),
}


def window(bg: Backgrounds, rng: np.random.Generator, frames: int) -> np.ndarray:
    """(frames, 224, 224, 3) uint8: a random square crop of ``frames`` consecutive sampled frames (v1's window)."""
    from ..video import resize_uint8

    clip = bg.clips[rng.integers(len(bg.clips))]
    T, H, W, _ = clip.shape
    start = rng.integers(0, max(1, T - frames + 1))
    idx = np.clip(np.arange(start, start + frames), 0, T - 1)
    side = int(rng.integers(min(H, W) // 2, min(H, W) + 1))
    y, x = rng.integers(0, H - side + 1), rng.integers(0, W - side + 1)
    crop = torch.from_numpy(np.ascontiguousarray(clip[idx, y : y + side, x : x + side]))
    return resize_uint8(crop, SIZE, SIZE).numpy().copy()


def make_sample(rng: np.random.Generator, bg: Backgrounds, qtype: str, frames: int = 16, phrasing: int = 0) -> Sample:
    """One clip of ``frames`` frames and its question (phrasing index into PHRASINGS[qtype]). Durations scale with
    the clip: a brief object shows for 1-2 frames, each counted appearance for T // 4 - 1 frames (3 at 16 frames)."""
    if qtype not in TYPES:
        raise ValueError(f"qtype must be one of {TYPES}, got {qtype!r}")
    if not MIN_FRAMES // 2 <= frames <= 64:
        raise ValueError(f"frames must be in [{MIN_FRAMES // 2}, 64], got {frames}")
    T = frames
    video = window(bg, rng, T)
    shown = [""] * T

    def paste(t: int, shape: str, colour: str, top: int, left: int) -> None:
        _paste(video[t], shape, colour, top, left)
        shown[t] = shape

    colour = str(rng.choice(list(COLOURS)))
    shape = str(rng.choice(SHAPES))
    lo, hi = 8, SIZE - OBJ - 8
    if qtype == "brief_shape":
        t0 = int(rng.integers(0, T - 1))
        top, left = (int(v) for v in rng.integers(lo, hi, 2))
        for t in range(t0, min(T, t0 + int(rng.integers(1, 3)))):
            paste(t, shape, colour, top, left)
        answer = shape
    elif qtype == "direction":
        answer = str(rng.choice(DIRECTIONS))
        fixed = int(rng.integers(lo, hi))
        path = np.linspace(lo, hi, T).round().astype(int)
        if answer in ("left", "up"):
            path = path[::-1]
        for t in range(T):
            paste(t, shape, colour, *((fixed, path[t]) if answer in ("left", "right") else (path[t], fixed)))
    elif qtype == "count":
        n = int(rng.integers(1, 5))
        slot = T // 4
        on = max(1, slot - 1)  # at least one frame off between appearances
        for s in np.sort(rng.choice(np.arange(4) * slot, size=n, replace=False)):
            top, left = (int(v) for v in rng.integers(lo, hi, 2))
            for t in range(s, s + on):
                paste(t, shape, colour, top, left)
        answer = str(n)
    elif qtype == "order":
        first, second = (str(s) for s in rng.choice(SHAPES, size=2, replace=False))
        on = 3 if T >= 12 else 2
        t1 = int(rng.integers(0, T // 2 - on + 1))
        t2 = int(rng.integers(T // 2, T - on + 1))
        for s, t0 in ((first, t1), (second, t2)):
            top, left = (int(v) for v in rng.integers(lo, hi, 2))
            for t in range(t0, t0 + on):
                paste(t, s, colour, top, left)
        answer = first
    else:  # location
        quad = int(rng.integers(4))
        half = SIZE // 2
        top = int(rng.integers(4, half - OBJ - 4)) + (half if quad >= 2 else 0)
        left = int(rng.integers(4, half - OBJ - 4)) + (half if quad % 2 else 0)
        on = 4 if T >= 12 else 3
        t0 = int(rng.integers(0, T - on + 1))
        for t in range(t0, t0 + on):
            paste(t, shape, colour, top, left)
        answer = QUADRANTS[quad]
    q = PHRASINGS[qtype][phrasing].format(colour=colour, shape=shape)
    opts = [str(o) for o in OPTIONS[qtype]]
    ts = torch.arange(T, dtype=torch.float32) * 0.5
    return Sample(torch.from_numpy(video), ts, q, opts, opts.index(answer), qtype, tuple(shown))


def draw(seed: int, i: int, bg: Backgrounds, frames: tuple[int, int] = (MIN_FRAMES, MAX_FRAMES),
         phrasings: bool = True) -> Sample:
    """Sample i of a seed: type i mod 5, a frame count drawn in [frames[0], frames[1]], a phrasing drawn (or v1's)."""
    rng = np.random.default_rng([seed, i])
    qtype = TYPES[i % len(TYPES)]
    t = int(rng.integers(frames[0], frames[1] + 1))
    p = int(rng.integers(len(PHRASINGS[qtype]))) if phrasings else 0
    return make_sample(rng, bg, qtype, frames=t, phrasing=p)


def object_labels(seed: int, i: int, bg: Backgrounds, grid: int = 4,
                  frames: tuple[int, int] = (MIN_FRAMES, MAX_FRAMES)) -> tuple[np.ndarray, np.ndarray]:
    """((T, grid*grid) float, (T,) int) for ``draw(seed, i, bg, frames)``: the share of each pooled token's cell that
    the composited object(s) cover, found by regenerating the sample and its bare window from the same key (draw's
    first draws, then make_sample draws its window first), and per frame the index in SHAPES of the shape shown
    (-1: none). Training targets only (train_v2's auxiliary losses)."""
    s = draw(seed, i, bg, frames)
    rng = np.random.default_rng([seed, i])
    rng.integers(frames[0], frames[1] + 1)
    rng.integers(len(PHRASINGS[s.qtype]))
    bare = window(bg, rng, s.frames.shape[0])
    return cover_shares(s.frames.numpy(), bare, grid), np.array([SHAPES.index(x) if x else -1 for x in s.shown])


def describe(cover: np.ndarray, shapes: np.ndarray, colour: str) -> str:
    """A caption of what was composited, from ``object_labels``' output: each appearance (a run of frames showing one
    shape) in time order with its frames, place (quadrant of the 4 x 4 token grid) and motion, then the count.
    A training target only (train_v2 --caption): many tokens of supervision per clip where the answer gives one."""
    grid = int(round(cover.shape[1] ** 0.5))
    rows, cols = np.divmod(np.arange(grid * grid), grid)

    def centre(t: int) -> tuple[float, float]:
        w = cover[t].astype(np.float64)
        return float((w * rows).sum() / w.sum()), float((w * cols).sum() / w.sum())

    def place(r: float, c: float) -> str:
        return QUADRANTS[2 * int(r >= (grid - 1) / 2) + int(c >= (grid - 1) / 2)]

    runs, t = [], 0
    while t < len(shapes):
        if shapes[t] < 0 or cover[t].sum() == 0:
            t += 1
            continue
        end = t
        while end + 1 < len(shapes) and shapes[end + 1] == shapes[t] and cover[end + 1].sum() > 0:
            end += 1
        runs.append((SHAPES[shapes[t]], t, end))
        t = end + 1
    parts = []
    for k, (shape, a, b) in enumerate(runs):
        when = f"in frame {a + 1}" if a == b else f"in frames {a + 1} to {b + 1}"
        (r0, c0), (r1, c1) = centre(a), centre(b)
        dr, dc = r1 - r0, c1 - c0
        if max(abs(dr), abs(dc)) >= 1:
            way = ("down" if dr > 0 else "up") if abs(dr) > abs(dc) else ("right" if dc > 0 else "left")
            where = f"moving {way} from the {place(r0, c0)} to the {place(r1, c1)}"
        else:
            where = f"at the {place(r0, c0)}"
        parts.append(f"{'A' if k == 0 else 'Then a'} {colour} {shape} is seen {when}, {where}.")
    n = len(runs)
    parts.append(f"{n} appearance{'s' if n != 1 else ''} in all.")
    return " ".join(parts)


def generate(n: int, seed: int = 0, frames: tuple[int, int] = (MIN_FRAMES, MAX_FRAMES), phrasings: bool = True,
             bg: Backgrounds | None = None) -> list[Sample]:
    bg = bg or Backgrounds(None)
    return [draw(seed, i, bg, frames, phrasings) for i in range(n)]
