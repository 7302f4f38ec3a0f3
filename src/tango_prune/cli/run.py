"""``tango-prune run``: answer a question about a video file with a method applied (a testbed or a local checkpoint),
printing the answer, frames, tokens kept and time to first token."""
from __future__ import annotations

import json
import sys

from .common import retention_arg
from .model_spec import adapter_positions, is_testbed


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
            "positions": adapter.get("positions", "adapter default"), "chunk_frames": method_opts.get("chunk_frames"),
            "ttft_s": ttft, "total_s": total}


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
    if args.chunk_frames is not None and args.chunk_frames < 1:
        raise ValueError(f"--chunk-frames must be at least 1, got {args.chunk_frames}")
    if args.chunk_frames is not None and args.method != "tango":
        raise ValueError(f"--chunk-frames works with --method tango; method {args.method!r} needs the whole video")
    chunk = {} if args.chunk_frames is None else {"chunk_frames": args.chunk_frames}
    r = answer_video(args.model, args.video, args.question, args.method, args.retention, args.frames, args.fps,
                     args.max_new_tokens, quiet=args.quiet or args.json, positions=args.positions, **chunk)
    if args.json:
        print(json.dumps(r))
    else:
        print(r["answer"])
        print(f"[{r['method']} @ {r['retention']:g}: {r['frames']} frames, {r['tokens_kept']} of {r['tokens_full']} "
              f"video tokens kept, time to first token {r['ttft_s']:.2f} s]")
    return 0


def register(sub) -> None:
    r = sub.add_parser("run", help="answer a question about a video file, with a method applied")
    r.add_argument("video", nargs="?")
    r.add_argument("question", nargs="?")
    r.add_argument("--model", default="testbed", help="testbed, testbed-v2[:FILE], a testbed .pt, or a local checkpoint dir")
    r.add_argument("--method", default="tango")
    r.add_argument("--retention", type=retention_arg, default=0.1)
    r.add_argument("--frames", type=int, help="frames sampled evenly (default 16 for the testbed, 32 otherwise)")
    r.add_argument("--fps", type=float, help="sample this many frames per second instead")
    r.add_argument("--max-new-tokens", type=int, default=32)
    r.add_argument("--chunk-frames", type=int, help="encode and prune this many frames at a time (tango; long videos: "
                   "only kept tokens are held past the tower)")
    r.add_argument("--positions", choices=("compact", "original"),
                   help="LLaVA-OV only (see eval --help); default: original for the testbed, compact otherwise")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.add_argument("--list-questions", action="store_true", help="the testbed's question templates")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_run)
