"""Testbed clips: real video backgrounds with composited objects, and A-D questions whose answers need specific
frames and regions (as in MVBench). Deterministic from a seed; any folder of background videos works.

Question types (objects large enough to survive DINOv2's colour jitter by *shape*; options in a fixed order per type):
- ``brief_shape``: an object is visible in only 1-2 frames; which shape was it?
- ``direction``:   an object crosses the frame; which way does it move?
- ``count``:       1-4 objects appear, each for a few frames at its own time; how many?
- ``order``:       two objects of different shapes appear one after the other; which came first?
- ``location``:    an object sits in one quadrant for a few frames; where?

A ``Clips`` says how a question set is drawn: ``V1`` (16 frames, one template per type: what `tango-prune eval`
asks every testbed, and v1's training set) or ``V2`` (8-16 frames drawn per clip, three phrasings per type: v2's
training set). Sample i of a seed depends only on (seed, i), the Clips and the backgrounds.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FRAMES, SIZE, OBJ = 16, 224, 64
SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 230), "yellow": (240, 220, 40)}
DIRECTIONS = ("left", "right", "up", "down")
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
TYPES = ("brief_shape", "direction", "count", "order", "location")
TEMPLATES = {
    "brief_shape": "A {colour} object appears for a moment. What shape is it?",
    "direction": "Which way does the {colour} {shape} move?",
    "count": "How many times does a {colour} {shape} appear?",
    "order": "Two {colour} objects appear one after the other. Which shape appears first?",
    "location": "Where in the picture does the {colour} {shape} appear?",
}
OPTIONS = {"brief_shape": SHAPES, "direction": DIRECTIONS, "count": ("1", "2", "3", "4"), "order": SHAPES,
           "location": QUADRANTS}
# Per type: the template first (what `tango-prune eval` asks), then other phrasings seen in v2's training.
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


@dataclass(frozen=True)
class Clips:
    """How a question set is drawn. ``draws``: "v1" draws nothing before the clip and keeps v1's start ranges and
    draw order, "v2" first draws the frame count and the phrasing; each committed model's training cache and eval's
    questions depend on theirs, so neither may change."""

    frames: tuple[int, int] = (FRAMES, FRAMES)
    phrasings: bool = False
    draws: str = "v1"

    def __post_init__(self) -> None:
        if self.draws not in ("v1", "v2") or (self.draws == "v1" and (self.frames[0] != self.frames[1] or self.phrasings)):
            raise ValueError(f"v1 draws are one frame count and one phrasing; got {self}")


V1 = Clips()
V2 = Clips(frames=(8, 16), phrasings=True, draws="v2")


@dataclass
class Sample:
    frames: torch.Tensor  # (T, 224, 224, 3) uint8
    timestamps: torch.Tensor  # (T,) seconds
    question: str
    options: list[str]  # four, shown as A-D
    answer: int  # index into options
    qtype: str
    shown: tuple[str, ...] = ()  # per frame, the shape composited into it ("" if none): training labels only

    def prompt(self) -> str:
        letters = "ABCD"
        return self.question + "\n" + "\n".join(f"({letters[i]}) {o}" for i, o in enumerate(self.options))


def shape_mask(shape: str, size: int = OBJ) -> np.ndarray:
    """(size, size) bool mask of a shape filling most of its box."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1  # [-1, 1]
    if shape == "circle":
        return x**2 + y**2 <= 0.85
    if shape == "square":
        return (np.abs(x) <= 0.8) & (np.abs(y) <= 0.8)
    if shape == "triangle":
        return (y <= 0.85) & (y >= -0.85 + 2 * np.abs(x) * 0.95)
    if shape == "cross":
        return ((np.abs(x) <= 0.28) & (np.abs(y) <= 0.9)) | ((np.abs(y) <= 0.28) & (np.abs(x) <= 0.9))
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def _paste(frame: np.ndarray, shape: str, colour: str, top: int, left: int) -> None:
    m = shape_mask(shape)
    h = min(OBJ, SIZE - top)
    w = min(OBJ, SIZE - left)
    region = frame[top : top + h, left : left + w]
    region[m[:h, :w]] = COLOURS[colour]


class Backgrounds:
    """Random crops and time windows of background videos, decoded once (64 frames each)."""

    def __init__(self, videos: list[Path] | None = None, frames_per_video: int = 64) -> None:
        from ..video import SAMPLE_CLIPS, read_frames, sample_clip

        paths = [sample_clip(c) for c in SAMPLE_CLIPS] if videos is None else list(videos)
        if not paths:
            raise ValueError("no background videos found; pass --videos DIR holding .mp4, .avi, .mkv, .mov or .webm files")
        self.clips = []
        for p in paths:
            fr, _ = read_frames(p, min(frames_per_video, _count(p)))
            self.clips.append(fr.numpy())

    def window(self, rng: np.random.Generator, frames: int = FRAMES) -> np.ndarray:
        """(frames, 224, 224, 3) uint8: a random square crop of ``frames`` consecutive sampled frames, resized."""
        from ..video import resize_uint8

        clip = self.clips[rng.integers(len(self.clips))]
        T, H, W, _ = clip.shape
        start = rng.integers(0, max(1, T - frames + 1))
        idx = np.clip(np.arange(start, start + frames), 0, T - 1)
        side = int(rng.integers(min(H, W) // 2, min(H, W) + 1))
        y, x = rng.integers(0, H - side + 1), rng.integers(0, W - side + 1)
        crop = torch.from_numpy(np.ascontiguousarray(clip[idx, y : y + side, x : x + side]))
        return resize_uint8(crop, SIZE, SIZE).numpy().copy()


def _count(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for p in c.demux(c.streams.video[0]) if p.pts is not None and p.size)


def make_sample(rng: np.random.Generator, bg: Backgrounds, qtype: str, frames: int = FRAMES, phrasing: int = 0,
                draws: str = "v1") -> Sample:
    """One clip of ``frames`` frames and its question (``phrasing`` indexes PHRASINGS[qtype]). Durations scale with
    the clip: a brief object shows for 1-2 frames, each counted appearance for T // 4 - 1 frames (3 at 16 frames).
    ``draws``: see Clips."""
    if qtype not in TYPES:
        raise ValueError(f"qtype must be one of {TYPES}, got {qtype!r}")
    if not 4 <= frames <= 64:
        raise ValueError(f"frames must be in [4, 64], got {frames}")
    T = frames
    slack = int(draws == "v2")  # v1 never drew the last start time that fits
    video = bg.window(rng, T)
    shown = [""] * T

    def paste(t: int, shape: str, colour: str, top: int, left: int) -> None:
        _paste(video[t], shape, colour, top, left)
        shown[t] = shape

    colour = str(rng.choice(list(COLOURS)))
    shape = str(rng.choice(SHAPES))
    lo, hi = 8, SIZE - OBJ - 8
    if qtype == "brief_shape":
        t0 = int(rng.integers(0, T - 1))
        span = int(rng.integers(1, 3)) if draws == "v1" else None
        top, left = (int(v) for v in rng.integers(lo, hi, 2))
        span = span if span is not None else int(rng.integers(1, 3))
        for t in range(t0, min(T, t0 + span)):
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
            for t in range(s, min(T, s + on)):
                paste(t, shape, colour, top, left)
        answer = str(n)
    elif qtype == "order":
        first, second = (str(s) for s in rng.choice(SHAPES, size=2, replace=False))
        on = 3 if T >= 12 else 2
        t1 = int(rng.integers(0, T // 2 - on + slack))
        t2 = int(rng.integers(T // 2, T - on + slack))
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
        t0 = int(rng.integers(0, T - on + slack))
        for t in range(t0, t0 + on):
            paste(t, shape, colour, top, left)
        answer = QUADRANTS[quad]
    q = PHRASINGS[qtype][phrasing].format(colour=colour, shape=shape)
    opts = [str(o) for o in OPTIONS[qtype]]
    ts = torch.arange(T, dtype=torch.float32) * 0.5
    return Sample(torch.from_numpy(video), ts, q, opts, opts.index(answer), qtype, tuple(shown))


def _head(clips: Clips, seed: int, i: int) -> tuple[np.random.Generator, str, int, int]:
    """Sample i's generator after the draws that precede its clip, its type, frame count and phrasing."""
    rng = np.random.default_rng([seed, i])
    qtype = TYPES[i % len(TYPES)]
    if clips.draws == "v1":
        return rng, qtype, clips.frames[0], 0
    t = int(rng.integers(clips.frames[0], clips.frames[1] + 1))
    p = int(rng.integers(len(PHRASINGS[qtype]))) if clips.phrasings else 0
    return rng, qtype, t, p


def draw(clips: Clips, seed: int, i: int, bg: Backgrounds) -> Sample:
    """Sample i of a seed: type i mod 5, the frame count and phrasing as ``clips`` says."""
    rng, qtype, t, p = _head(clips, seed, i)
    return make_sample(rng, bg, qtype, frames=t, phrasing=p, draws=clips.draws)


def generate(n: int, seed: int = 0, videos: str | Path | None = None, clips: Clips = V1,
             bg: Backgrounds | None = None) -> list[Sample]:
    """``n`` samples, question types in turn (eval's questions by default)."""
    if bg is None:
        paths = None
        if videos is not None:
            d = Path(videos)
            if not d.is_dir():
                raise ValueError(f"--videos must be a folder of video files, got {videos!r}")
            paths = sorted(p for p in d.iterdir() if p.suffix.lower() in (".mp4", ".avi", ".mkv", ".mov", ".webm"))
        bg = Backgrounds(paths)
    return [draw(clips, seed, i, bg) for i in range(n)]


def cover_shares(frames: np.ndarray, bare: np.ndarray, grid: int) -> np.ndarray:
    """(T, grid * grid): the share of each cell of a grid x grid layout in which the frames differ from their bare
    background, i.e. the composited object's coverage per token."""
    diff = torch.from_numpy(np.any(frames != bare, axis=-1).astype(np.float32))  # (T, H, W)
    return torch.nn.functional.avg_pool2d(diff[:, None], diff.shape[-1] // grid).reshape(len(diff), grid * grid).numpy()


def object_labels(clips: Clips, seed: int, i: int, bg: Backgrounds, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """((T, grid * grid) float, (T,) int) for ``draw(clips, seed, i, bg)``: the share of each pooled token's cell that
    the composited object(s) cover, found by regenerating the sample and its bare window from the same key (the
    clip's window is its first draw after ``_head``), and per frame the index in SHAPES of the shape shown (-1:
    none; one shape per frame in every type). Training targets and the object oracle's truth only."""
    s = draw(clips, seed, i, bg)
    bare = bg.window(_head(clips, seed, i)[0], s.frames.shape[0])
    return cover_shares(s.frames.numpy(), bare, grid), np.array([SHAPES.index(x) if x else -1 for x in s.shown])


def match_question(question: str) -> tuple[str, list[str]]:
    """(question type, its options) for a question in one of the templates (case and spacing ignored)."""
    import re

    norm = " ".join(question.lower().split())
    for qtype, t in TEMPLATES.items():
        pat = re.escape(t.lower()).replace(r"\{colour\}", "(" + "|".join(COLOURS) + ")").replace(
            r"\{shape\}", "(" + "|".join(SHAPES) + ")")
        if re.fullmatch(pat, norm):
            return qtype, list(OPTIONS[qtype])
    raise ValueError(f"the testbed model understands only its own question templates, not {question!r}; "
                     "see tango-prune run --list-questions")


def describe(cover: np.ndarray, shapes: np.ndarray, colour: str) -> str:
    """A caption of what was composited, from ``object_labels``' output: each appearance (a run of frames showing one
    shape) in time order with its frames, place (quadrant of the token grid) and motion, then the count. A training
    target only (``train --caption``): many tokens of supervision per clip where the answer gives one."""
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
