"""tango-prune command line. Bad input ends with one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit code 2, not a usage dump
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _retention(text: str) -> float:
    try:
        r = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"retention must be a number in (0, 1], got {text!r}") from None
    if not 0.0 < r <= 1.0:
        raise argparse.ArgumentTypeError(f"retention must be in (0, 1], got {text}")
    return r


def _dtype(name: str, device: str):
    """--dtype (auto: hardware.default_dtype(device)) -> torch.dtype."""
    from .hardware import resolve_dtype

    try:
        return resolve_dtype(name, device)
    except RuntimeError as e:  # a device string torch cannot parse
        raise UsageError(f"--device: {e}") from None


def cmd_bench_pruner(args) -> int:
    from .bench.pruner import DTYPES, format_table, run_bench

    if len(args.scene_frames) != 2 or args.scene_frames[0] > args.scene_frames[1]:
        raise UsageError(f"--scene-frames takes MIN,MAX, got {args.scene_frames}")
    sims = tuple(s.strip() for s in args.similarity.split(","))
    bad = [s for s in sims if s not in ("exact", "fast")]
    if bad:
        raise UsageError(f"--similarity takes exact and/or fast, got {bad[0]!r}")
    dtype = next(k for k, v in DTYPES.items() if v == _dtype(args.dtype, args.device))  # its rows carry the name
    rows = run_bench(
        args.frames, args.tokens, args.dim, dtype, args.retention, sims, args.repeats,
        args.release, args.release_max_frames, args.device, progress=not args.quiet,
        scene_frames=tuple(args.scene_frames), max_segment_frames=args.max_segment_frames,
    )
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"results": rows}, indent=1))
        print(f"wrote {args.json}")
    return 0


def load_tokens(path: str):
    """VideoTokens from a torch file holding a dict with features (T, L, D) and optional saliency, grid, timestamps."""
    import torch

    from .types import VideoTokens

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"no such file: {path}")
    try:
        d = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # a corrupt or foreign file: say so in one line
        raise UsageError(f"cannot read {path} as a torch file: {e.__class__.__name__}") from None
    if isinstance(d, dict) and "inputs" in d:  # the golden vectors' layout
        d = d["inputs"]
    if not isinstance(d, dict) or "features" not in d:
        raise UsageError(f"{path} must hold a dict with 'features' (T, L, D) and optional 'saliency', 'grid', 'timestamps'")
    f = d["features"]
    grid = d.get("grid")
    if grid is None:
        side = math.isqrt(f.shape[1]) if f.dim() == 3 else 0
        if side * side != f.shape[1]:
            raise UsageError(f"{path}: L={f.shape[1]} is not square; store 'grid' = (T, H, W) in the file")
        grid = (f.shape[0], side, side)
    return VideoTokens(f, d.get("saliency"), tuple(grid), d.get("timestamps"))


def cmd_prune(args) -> int:
    from .methods import get_method

    vt = load_tokens(args.file)
    pruner = get_method(args.method)(retention=args.retention)
    t = time.perf_counter()
    out = pruner(vt)
    sec = time.perf_counter() - t
    T, L, D = vt.features.shape
    summary = {
        "file": args.file, "method": args.method, "retention": args.retention, "frames": T,
        "tokens_full": T * L, "tokens_kept": out.num_kept, "segments": out.segments,
        "merged": int(out.merged.sum()), "seconds": sec, "saliency": out.info.get("saliency"),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{args.method} @ {args.retention:g}: kept {out.num_kept} of {T * L} tokens "
            f"({out.num_kept / (T * L):.1%}) from {T} frames in {sec * 1000:.1f} ms; "
            f"segments {out.segments}; {summary['merged']} kept tokens carry merged features; saliency: {summary['saliency']}"
        )
    return 0


def _retentions(text: str) -> list[float]:
    return [_retention(v) for v in text.split(",") if v.strip()]


def cmd_compare(args) -> int:
    from .eval.compare import compare, format_table, resolve_methods
    from .video import SAMPLE_CLIPS, pixel_patch_tokens, sample_clip

    methods = resolve_methods(args.methods)
    if args.file and args.file.lower().endswith(".pt"):
        vt, source = load_tokens(args.file), args.file
    else:
        path = args.file or str(sample_clip(args.clip if args.clip in SAMPLE_CLIPS else "bikes"))
        _, vt = pixel_patch_tokens(path, args.frames)
        source = f"{Path(path).name} ({args.frames} frames, pixel-patch tokens)"
    T, L, D = vt.features.shape
    if not args.json:
        print(f"{source}: {T} frames x {L} tokens, D={D}")
    rows = compare(vt, methods, args.retention, args.repeats, progress=not (args.quiet or args.json))
    if args.json:
        print(json.dumps({"source": source, "frames": T, "tokens_per_frame": L, "results": rows}))
    else:
        print(format_table(rows))
    return 0


def cmd_bench(args) -> int:
    from .bench.e2e import format_table, plot, run
    from .eval.compare import resolve_methods

    methods = [name for _, name, _ in resolve_methods(args.methods)]
    if args.device != "cpu" and not args.device.startswith("cuda"):
        raise UsageError(f"--device takes cpu or cuda[:N], got {args.device!r}")
    dtype = _dtype(args.dtype, args.device)
    rows = run(args.arch, args.frames, methods, args.retention, dtype, args.repeats, args.decode_tokens,
               args.layers, progress=not args.quiet, device=args.device)
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"results": rows}, indent=1))
        print(f"wrote {args.json}")
    if args.plot:
        print(f"wrote {plot(rows, args.plot)}")
    return 0


def cmd_viz(args) -> int:
    from .eval.compare import resolve_methods
    from .methods import get_method
    from .video import pixel_patch_tokens
    from .viz import draw_compare, draw_kept

    entries = resolve_methods(args.compare or args.method)
    frames, vt = pixel_patch_tokens(args.video, args.frames)
    T, L, _ = vt.features.shape
    results = [(label, get_method(name)(retention=args.retention, **opts)(vt)) for label, name, opts in entries]
    name = Path(args.video).name
    if args.compare:
        path = draw_compare(frames, results, args.output, f"{name}: {T} frames, retention {args.retention:g} (pixel-patch tokens)",
                            vt.timestamps)
    else:
        label, out = results[0]
        path = draw_kept(frames, out, args.output, f"{label} @ {args.retention:g} on {name}: {out.num_kept} of {T * L} tokens",
                         vt.timestamps)
    print(f"wrote {path}")
    return 0


def cmd_demo(args, rest: list[str]) -> int:
    from . import demo

    return demo.main(rest)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tango-prune", description="Visual-token pruning for Video LLMs (Tango and peers).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    b = sub.add_parser("bench-pruner", help="median time and peak memory of the pruner per video size")
    b.add_argument("--frames", type=_ints, default=[32, 128], help="comma-separated frame counts")
    b.add_argument("--tokens", type=int, default=196, help="tokens per frame (a square grid)")
    b.add_argument("--dim", type=int, default=3584)
    b.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32", "fp16"],
                   help="features' dtype; auto: bf16 on CUDA and on CPUs with native bf16, else fp32")
    b.add_argument("--retention", type=_retention, default=0.1)
    b.add_argument("--similarity", default="exact,fast", help="exact and/or fast")
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--device", default="cpu")
    b.add_argument("--scene-frames", type=_ints, default=[4, 24], help="MIN,MAX frames per synthetic scene")
    b.add_argument("--max-segment-frames", type=int, default=1024, help="TangoConfig.max_segment_frames")
    b.add_argument("--release", help="path to a checkout of the authors' release (xjtupanda/Tango) to time side by side")
    b.add_argument("--release-max-frames", type=int, default=256)
    b.add_argument("--json", help="write results to this JSON file")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=cmd_bench_pruner)

    e = sub.add_parser("bench", help="TTFT breakdown of a Video LLM at real shapes (random weights), per method")
    e.add_argument("--arch", required=True, help="llava-ov-0.5b, llava-ov-7b, llava-video-7b or qwen2.5-vl-7b")
    e.add_argument("--frames", type=_ints, default=[8])
    e.add_argument("--methods", default="none,tango", help="registry names, or all")
    e.add_argument("--retention", type=_retentions, default=[0.1])
    e.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 on CUDA and on CPUs with native bf16, else fp32")
    e.add_argument("--device", default="cpu")
    e.add_argument("--layers", type=int, help="depth-reduced model, times scaled per layer (labelled estimated)")
    e.add_argument("--repeats", type=int, default=2)
    e.add_argument("--decode-tokens", type=int, default=8)
    e.add_argument("--json")
    e.add_argument("--plot", help="PNG of the TTFT breakdown")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_bench)

    r = sub.add_parser("prune", help="prune a saved VideoTokens file and print a summary")
    r.add_argument("file", help="torch file with a dict: features (T, L, D), saliency, grid, timestamps")
    r.add_argument("--method", default="tango")
    r.add_argument("--retention", type=_retention, default=0.1)
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_prune)

    c = sub.add_parser("compare", help="every method side by side: kept, time, coverage, fragmentation")
    c.add_argument("file", nargs="?", help="saved tokens (.pt, as for prune) or a video file; default: a sample clip")
    c.add_argument("--clip", default="bikes", help="sample clip when no file is given: bikes, carphone_pristine, bigbuckbunny")
    c.add_argument("--methods", default="all", help="'all' or names, with options as name:key=value (tango:strope=off)")
    c.add_argument("--retention", type=_retentions, default=[0.1, 0.2], help="comma-separated, e.g. 0.1,0.2")
    c.add_argument("--frames", type=int, default=16, help="frames sampled from a video")
    c.add_argument("--repeats", type=int, default=1)
    c.add_argument("--json", action="store_true")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_compare)

    v = sub.add_parser("viz", help="picture of the tokens a method keeps on a video (or several, side by side)")
    v.add_argument("video")
    v.add_argument("--method", default="tango")
    v.add_argument("--compare", help="comma-separated methods, one row each (e.g. tango,topk,uniform)")
    v.add_argument("--retention", type=_retention, default=0.1)
    v.add_argument("--frames", type=int, default=16)
    v.add_argument("-o", "--output", required=True, help="PNG file to write")
    v.set_defaults(func=cmd_viz)

    from .commands import register, register_fidelity, register_run

    register(sub, _retentions)
    register_run(sub, _retention)
    register_fidelity(sub, _retentions)

    d = sub.add_parser("demo", help="decode a real clip, prune its tokens, draw what was kept", add_help=False)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        if args.command == "demo":
            return cmd_demo(args, rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return args.func(args)
    except (UsageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head & co.: not an error
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":
    sys.exit(main())
