"""``bench`` (TTFT breakdown of a Video LLM at real shapes, random weights) and ``bench-pruner`` (the pruner alone)."""
from __future__ import annotations

import json
from pathlib import Path

from .common import UsageError, ints_arg, parse_dtype, retention_arg, retentions_arg


def cmd_bench_pruner(args) -> int:
    from ..bench.pruner import DTYPES, format_table, run_bench

    if len(args.scene_frames) != 2 or args.scene_frames[0] > args.scene_frames[1]:
        raise UsageError(f"--scene-frames takes MIN,MAX, got {args.scene_frames}")
    sims = tuple(s.strip() for s in args.similarity.split(","))
    bad = [s for s in sims if s not in ("exact", "fast")]
    if bad:
        raise UsageError(f"--similarity takes exact and/or fast, got {bad[0]!r}")
    dtype = next(k for k, v in DTYPES.items() if v == parse_dtype(args.dtype, args.device))  # its rows carry the name
    rows = run_bench(
        args.frames, args.tokens, args.dim, dtype, args.retention, sims, args.repeats,
        args.release, args.release_max_frames, args.device, progress=not args.quiet,
        scene_frames=tuple(args.scene_frames), max_segment_frames=args.max_segment_frames,
        merge_window_frames=args.merge_window_frames,
        methods=_other_methods(args.methods), scene=args.scene,
    )
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"results": rows}, indent=1))
        print(f"wrote {args.json}")
    return 0


def _other_methods(text: str) -> tuple[tuple[str, str, dict], ...]:
    """--methods of bench-pruner: registry names besides plain tango (timed per similarity mode anyway), with
    options as name:key=value (e.g. tango:brief_frames=1), or 'all' -> (label, name, options)."""
    from ..methods import resolve_methods

    if not text.strip():
        return ()
    return tuple(m for m in resolve_methods(text) if m[0] not in ("tango", "none"))


def cmd_bench(args) -> int:
    from ..bench.e2e import format_table, plot, run
    from ..methods import resolve_methods

    if args.encoder is not None:
        return _bench_encoder(args)
    if args.llm_stage is not None:
        return _bench_stage(args, resolve_methods(args.methods))
    methods = [name for _, name, _ in resolve_methods(args.methods)]
    if args.engine == "vllm":
        return _bench_vllm(args, methods)
    if args.device != "cpu" and not args.device.startswith("cuda"):
        raise UsageError(f"--device takes cpu or cuda[:N], got {args.device!r}")
    dtype = parse_dtype(args.dtype, args.device)
    rows = run(args.arch, args.frames, methods, args.retention, dtype, args.repeats, args.decode_tokens,
               args.layers, progress=not args.quiet, device=args.device)
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"results": rows}, indent=1))
        print(f"wrote {args.json}")
    if args.plot:
        print(f"wrote {plot(rows, args.plot)}")
    return 0


def _bench_stage(args, methods: list[tuple[str, str, dict]]) -> int:
    """--llm-stage: each method before the LLM only, and with the stage inside it at the same mean retention."""
    from ..bench import e2e_stage
    from ..bench.e2e import plot

    if args.engine != "hf":
        raise UsageError("--llm-stage runs on --engine hf (the stage is installed on a Hugging Face model)")
    if args.device != "cpu" and not args.device.startswith("cuda"):
        raise UsageError(f"--device takes cpu or cuda[:N], got {args.device!r}")
    stage = e2e_stage.parse_stage(args.llm_stage)
    dtype = parse_dtype(args.dtype, args.device)
    rows = e2e_stage.run(args.arch, args.frames, methods, args.retention, stage, dtype, args.repeats,
                         args.decode_tokens, args.layers, progress=not args.quiet, device=args.device)
    print(e2e_stage.format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"llm_stage": e2e_stage.stage_label(stage), "results": rows}, indent=1))
        print(f"wrote {args.json}")
    if args.plot:  # one bar per row: the stage's rows carry it in their label
        labelled = [dict(r, method=r["method"] + (f"+stage {r['llm_stage']}" if r["llm_stage"] else "")) for r in rows]
        print(f"wrote {plot(labelled, args.plot)}")
    return 0


def _bench_encoder(args) -> int:
    """--encoder: Tango + the encoder stage against Tango alone and stock, skip pattern from the real ViT-S."""
    from ..bench import encoder
    from ..encoders.reuse import resolve_encoder
    from ..video import SAMPLE_CLIPS

    if args.llm_stage is not None or args.concurrency or len(args.frames) != 1 or len(args.retention) != 1:
        raise UsageError("--encoder runs without --llm-stage or --concurrency, with one --frames and one --retention")
    clips = [c for c in args.clips.split(",") if c]
    bad = [c for c in clips if c not in SAMPLE_CLIPS]
    if not clips or bad:
        raise UsageError(f"--clips takes names among {', '.join(SAMPLE_CLIPS)}; got {args.clips!r}")
    cfgs = [resolve_encoder(e) for e in args.encoder]
    if args.engine == "vllm":
        from ..bench import vllm_encoder

        try:
            vllm_encoder.grid_side(args.arch, args.px)
        except ValueError as e:
            raise UsageError(f"--engine vllm --encoder: {e}") from None
        result = vllm_encoder.drive(args.arch, args.frames[0], args.px, clips, cfgs, args.retention[0], args.repeats,
                                    args.vllm_python, progress=not args.quiet)
        print(vllm_encoder.format_table(result))
        if args.json:
            Path(args.json).write_text(json.dumps(dict(result, engine="vllm"), indent=1))
            print(f"wrote {args.json}")
        return 0
    result = encoder.run(args.arch, args.frames[0], clips, cfgs, args.retention[0], args.repeats,
                         parse_dtype(args.dtype, args.device), progress=not args.quiet, device=args.device)
    print(encoder.format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0


def _bench_vllm(args, methods: list[str]) -> int:
    from ..bench.vllm_engine import drive, format_rows

    if args.concurrency:
        return _bench_vllm_load(args, methods)
    rows = drive(args.arch, args.frames, methods, args.retention, args.repeats, args.px, args.vllm_python,
                 progress=not args.quiet)
    print(format_rows(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"engine": "vllm", "results": rows}, indent=1))
        print(f"wrote {args.json}")
    return 0


def _bench_vllm_load(args, methods: list[str]) -> int:
    from ..bench.vllm_load import drive, format_load

    if len(args.frames) != 1 or len(args.retention) != 1:
        raise UsageError("--concurrency takes one --frames and one --retention value")
    if min(args.concurrency) < 1 or args.rounds < 1:
        raise UsageError("--concurrency values and --rounds must be >= 1")
    results = drive(args.arch, args.frames[0], methods, args.retention[0], args.concurrency, args.rounds, args.px,
                    args.vllm_python, progress=not args.quiet)
    print(format_load(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"engine": "vllm", "load": results}, indent=1))
        print(f"wrote {args.json}")
    return 0


def register(sub) -> None:
    b = sub.add_parser("bench-pruner", help="median time and peak memory of the pruner per video size")
    b.add_argument("--frames", type=ints_arg, default=[32, 128], help="comma-separated frame counts")
    b.add_argument("--tokens", type=int, default=196, help="tokens per frame (a square grid)")
    b.add_argument("--dim", type=int, default=3584)
    b.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32", "fp16"],
                   help="features' dtype; auto: bf16 on CUDA and on CPUs with native bf16, else fp32")
    b.add_argument("--retention", type=retention_arg, default=0.1)
    b.add_argument("--similarity", default="exact,fast", help="exact and/or fast")
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--device", default="cpu")
    b.add_argument("--scene-frames", type=ints_arg, default=[4, 24], help="MIN,MAX frames per synthetic scene")
    b.add_argument("--scene", default="video", choices=["video", "noise", "moving"],
                   help="video: scenes with a still background (--scene-frames); noise: no static position anywhere "
                   "(a shared rank-64 base plus each frame's own noise, 6.4x the base); moving: the pruner's worst "
                   "input, frames alike enough to form one long segment with nothing static (a rank-32 base plus "
                   "0.6x noise: each token's similarity to the frame before ~0.74, between segment_tau and static_tau)")
    b.add_argument("--max-segment-frames", type=int, default=1024, help="TangoConfig.max_segment_frames")
    b.add_argument("--merge-window-frames", type=int, default=None,
                   help="TangoConfig.merge_window_frames (default: the release's whole-segment merge)")
    b.add_argument("--methods", default="", help="other registry methods to time on the same videos (e.g. flashvid,evs, or all)")
    b.add_argument("--release", help="path to a checkout of the authors' release (xjtupanda/Tango) to time side by side")
    b.add_argument("--release-max-frames", type=int, default=256)
    b.add_argument("--json", help="write results to this JSON file")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=cmd_bench_pruner)

    e = sub.add_parser("bench", help="TTFT breakdown of a Video LLM at real shapes (random weights), per method")
    e.add_argument("--arch", required=True, help="llava-ov-0.5b, llava-ov-7b, llava-video-7b, qwen2.5-vl-3b, qwen2.5-vl-7b or qwen3-vl-8b")
    e.add_argument("--frames", type=ints_arg, default=[8])
    e.add_argument("--methods", default="none,tango", help="registry names, or all")
    e.add_argument("--retention", type=retentions_arg, default=[0.1])
    e.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 on CUDA and on CPUs with native bf16, else fp32")
    e.add_argument("--device", default="cpu")
    e.add_argument("--layers", type=int, help="depth-reduced model, times scaled per layer (labelled estimated)")
    e.add_argument("--repeats", type=int, default=2)
    e.add_argument("--decode-tokens", type=int, default=8)
    e.add_argument("--json")
    e.add_argument("--encoder", action="append", metavar="reuse[:tau=..,gate_layer=..,key_share=..,halo=..]",
                   help="time Tango + the encoder stage against Tango alone and stock (LLaVA-OV and Qwen shapes); the skip "
                        "pattern comes from the real ViT-S on --clips; repeat for several settings in one run")
    e.add_argument("--clips", default="bikes,carphone_pristine,bigbuckbunny", help="--encoder: sample clips, comma-separated")
    e.add_argument("--plot", help="PNG of the TTFT breakdown")
    e.add_argument("--quiet", action="store_true")
    e.add_argument("--llm-stage", nargs="?", const="llava-video", metavar="PRESET|LAYER/KEEP",
                   help="also run each method with the stage inside the LLM (default preset llava-video: layer 18, "
                        "keep 0.5), its pre-LLM retention raised so the mean over the layers is --retention")
    e.add_argument("--engine", default="hf", choices=["hf", "vllm"],
                   help="hf: this process, stage by stage; vllm: whole requests through vLLM (qwen2.5-vl-3b/7b, qwen3-vl-8b)")
    e.add_argument("--vllm-python", default=".venv-vllm/bin/python", help="the vLLM venv's python (--engine vllm)")
    e.add_argument("--px", type=int, default=336, help="frame side in pixels (--engine vllm)")
    e.add_argument("--concurrency", type=ints_arg, metavar="C1,C2,...",
                   help="--engine vllm: requests/s and TTFT p50/p95 with C requests in flight (one engine per method)")
    e.add_argument("--rounds", type=int, default=2, help="--concurrency: requests per level = concurrency x rounds")
    e.set_defaults(func=cmd_bench)
