"""Commands that prune without a Video LLM: ``prune`` (a saved token file), ``compare`` (every method on one video's
tokens) and ``viz`` (pictures of the kept tokens)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .common import load_tokens, retention_arg, retentions_arg


def cmd_prune(args) -> int:
    from ..methods import get_method

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


def cmd_compare(args) -> int:
    from ..eval.compare import compare, format_table
    from ..methods import resolve_methods
    from ..video import SAMPLE_CLIPS, pixel_patch_tokens, sample_clip

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


def cmd_viz(args) -> int:
    from ..methods import resolve_methods
    from ..methods import get_method
    from ..video import pixel_patch_tokens
    from ..viz import draw_compare, draw_kept

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


def register(sub) -> None:
    r = sub.add_parser("prune", help="prune a saved VideoTokens file and print a summary")
    r.add_argument("file", help="torch file with a dict: features (T, L, D), saliency, grid, timestamps")
    r.add_argument("--method", default="tango")
    r.add_argument("--retention", type=retention_arg, default=0.1)
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_prune)

    c = sub.add_parser("compare", help="every method side by side: kept, time, coverage, fragmentation")
    c.add_argument("file", nargs="?", help="saved tokens (.pt, as for prune) or a video file; default: a sample clip")
    c.add_argument("--clip", default="bikes", help="sample clip when no file is given: bikes, carphone_pristine, bigbuckbunny")
    c.add_argument("--methods", default="all", help="'all' or names, with options as name:key=value (tango:strope=off)")
    c.add_argument("--retention", type=retentions_arg, default=[0.1, 0.2], help="comma-separated, e.g. 0.1,0.2")
    c.add_argument("--frames", type=int, default=16, help="frames sampled from a video")
    c.add_argument("--repeats", type=int, default=1)
    c.add_argument("--json", action="store_true")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_compare)

    v = sub.add_parser("viz", help="picture of the tokens a method keeps on a video (or several, side by side)")
    v.add_argument("video")
    v.add_argument("--method", default="tango")
    v.add_argument("--compare", help="comma-separated methods, one row each (e.g. tango,topk,uniform)")
    v.add_argument("--retention", type=retention_arg, default=0.1)
    v.add_argument("--frames", type=int, default=16)
    v.add_argument("-o", "--output", required=True, help="PNG file to write")
    v.set_defaults(func=cmd_viz)
