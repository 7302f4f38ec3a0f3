"""Testbed clips: real video backgrounds with composited objects, and A-D questions whose answers need specific
frames and regions (as in MVBench). Deterministic from a seed; any folder of background videos works.

Options come in a fixed order per question type (A-D).

Question types (one object layer per clip, objects large enough to survive DINOv2's colour jitter by *shape*):
- ``brief_shape``: an object is visible in only 1-2 of the 16 frames; which shape was it?
- ``direction``:   an object crosses the frame; which way does it move?
- ``count``:       1-4 objects appear, each for a few frames at its own time; how many?
- ``order``:       two objects of different shapes appear one after the other; which came first?
- ``location``:    an object sits in one quadrant for a few frames; where?
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


@dataclass
class Sample:
    frames: torch.Tensor  # (16, 224, 224, 3) uint8
    timestamps: torch.Tensor  # (16,) seconds
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

    def window(self, rng: np.random.Generator) -> np.ndarray:
        """(16, 224, 224, 3) uint8: a random square crop of 16 consecutive sampled frames, resized to 224."""
        clip = self.clips[rng.integers(len(self.clips))]
        T, H, W, _ = clip.shape
        start = rng.integers(0, max(1, T - FRAMES + 1))
        idx = np.clip(np.arange(start, start + FRAMES), 0, T - 1)
        side = int(rng.integers(min(H, W) // 2, min(H, W) + 1))
        y, x = rng.integers(0, H - side + 1), rng.integers(0, W - side + 1)
        from ..video import resize_uint8

        crop = torch.from_numpy(np.ascontiguousarray(clip[idx, y : y + side, x : x + side]))
        return resize_uint8(crop, SIZE, SIZE).numpy().copy()


def _count(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for p in c.demux(c.streams.video[0]) if p.pts is not None and p.size)


def _options(rng: np.random.Generator, choices: tuple, correct) -> tuple[list, int]:
    """The options in their fixed order, so the answer's letter depends on the video alone: a small decoder trained
    from scratch need not also learn to copy an option's position (that pointer task is not what we measure)."""
    opts = list(choices)
    return [str(o) for o in opts], opts.index(correct)


def make_sample(rng: np.random.Generator, bg: Backgrounds, qtype: str) -> Sample:
    frames = bg.window(rng)
    shown = [""] * FRAMES

    def paste(frame_index: int, shape: str, colour: str, top: int, left: int) -> None:
        _paste(frames[frame_index], shape, colour, top, left)
        shown[frame_index] = shape

    colour = str(rng.choice(list(COLOURS)))
    shape = str(rng.choice(SHAPES))
    lo, hi = 8, SIZE - OBJ - 8
    if qtype == "brief_shape":
        t0 = int(rng.integers(0, FRAMES - 1))
        span = int(rng.integers(1, 3))
        top, left = (int(v) for v in rng.integers(lo, hi, 2))
        for t in range(t0, min(FRAMES, t0 + span)):
            paste(t, shape, colour, top, left)
        q = TEMPLATES[qtype].format(colour=colour, shape=shape)
        opts, ans = _options(rng, SHAPES, shape)
    elif qtype == "direction":
        d = str(rng.choice(DIRECTIONS))
        fixed = int(rng.integers(lo, hi))
        path = np.linspace(lo, hi, FRAMES).round().astype(int)
        if d in ("left", "up"):
            path = path[::-1]
        for t in range(FRAMES):
            top, left = (fixed, path[t]) if d in ("left", "right") else (path[t], fixed)
            paste(t, shape, colour, top, left)
        q = TEMPLATES[qtype].format(colour=colour, shape=shape)
        opts, ans = _options(rng, DIRECTIONS, d)
    elif qtype == "count":
        n = int(rng.integers(1, 5))
        starts = np.sort(rng.choice(np.arange(0, FRAMES, 4), size=n, replace=False))  # 3 frames on, at least 1 off
        for s in starts:
            top, left = (int(v) for v in rng.integers(lo, hi, 2))
            for t in range(s, min(FRAMES, s + 3)):
                paste(t, shape, colour, top, left)
        q = TEMPLATES[qtype].format(colour=colour, shape=shape)
        opts, ans = _options(rng, OPTIONS[qtype], str(n))
    elif qtype == "order":
        first, second = (str(s) for s in rng.choice(SHAPES, size=2, replace=False))
        t1 = int(rng.integers(0, FRAMES // 2 - 3))
        t2 = int(rng.integers(FRAMES // 2, FRAMES - 3))
        for s, t0 in ((first, t1), (second, t2)):
            top, left = (int(v) for v in rng.integers(lo, hi, 2))
            for t in range(t0, t0 + 3):
                paste(t, s, colour, top, left)
        q = TEMPLATES[qtype].format(colour=colour, shape=shape)
        opts, ans = _options(rng, SHAPES, first)
    elif qtype == "location":
        quad = int(rng.integers(4))
        half = SIZE // 2
        top = int(rng.integers(4, half - OBJ - 4)) + (half if quad >= 2 else 0)
        left = int(rng.integers(4, half - OBJ - 4)) + (half if quad % 2 else 0)
        t0 = int(rng.integers(0, FRAMES - 4))
        for t in range(t0, t0 + 4):
            paste(t, shape, colour, top, left)
        q = TEMPLATES[qtype].format(colour=colour, shape=shape)
        opts, ans = _options(rng, QUADRANTS, QUADRANTS[quad])
    else:
        raise ValueError(f"qtype must be one of {TYPES}, got {qtype!r}")
    ts = torch.arange(FRAMES, dtype=torch.float32) * 0.5
    return Sample(torch.from_numpy(frames), ts, q, opts, ans, qtype, tuple(shown))


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


def object_fraction(key, bg: Backgrounds, qtype: str) -> np.ndarray:
    """(16, 64): the share of each pooled token's cell the object covers; see object_labels."""
    return object_labels(key, bg, qtype)[0]


def object_labels(key, bg: Backgrounds, qtype: str) -> tuple[np.ndarray, np.ndarray]:
    """((16, 64) float, (16,) int): the share of each pooled token's 28 x 28 cell that the composited object(s) cover in sample
    ``make_sample(np.random.default_rng(key), bg, qtype)``, found by regenerating it and its bare background from
    the same key (the generator is deterministic; make_sample draws its window first), and per frame the index in
    SHAPES of the shape shown in it (-1: none; one shape per frame in every question type)."""

    s = make_sample(np.random.default_rng(key), bg, qtype)
    bare = bg.window(np.random.default_rng(key))
    return cover_shares(s.frames.numpy(), bare, 8), np.array([SHAPES.index(x) if x else -1 for x in s.shown])


def cover_shares(frames: np.ndarray, bare: np.ndarray, grid: int) -> np.ndarray:
    """(T, grid * grid): the share of each cell of a grid x grid layout in which the frames differ from their bare
    background, i.e. the composited object's coverage per token."""
    import torch

    diff = torch.from_numpy(np.any(frames != bare, axis=-1).astype(np.float32))  # (T, H, W)
    return torch.nn.functional.avg_pool2d(diff[:, None], diff.shape[-1] // grid).reshape(len(diff), grid * grid).numpy()


def generate(n: int, seed: int = 0, videos: str | Path | None = None, types: tuple[str, ...] = TYPES) -> list[Sample]:
    """``n`` samples, question types in turn; sample i depends only on (seed, i) and the backgrounds."""
    paths = None
    if videos is not None:
        d = Path(videos)
        if not d.is_dir():
            raise ValueError(f"--videos must be a folder of video files, got {videos!r}")
        paths = sorted(p for p in d.iterdir() if p.suffix.lower() in (".mp4", ".avi", ".mkv", ".mov", ".webm"))
    bg = Backgrounds(paths)
    return [make_sample(np.random.default_rng([seed, i]), bg, types[i % len(types)]) for i in range(n)]
