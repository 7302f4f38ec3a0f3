"""Batch invariance of one vLLM engine, for tests/test_vllm_batch.py (run with the vLLM venv's python).

    python tests/vllm/batch_check.py --family qwen3_vl --model DIR --out OUT.json [--rate 0.9] [--n 8]

One fp32 engine (max_num_seqs = n, vLLM's default prefix caching), n video requests of different frame counts, frame sizes and
prompts. First every request alone (one ``generate`` call each), then all n in one ``generate`` call. Each request
carries its own ``multi_modal_uuids`` per pass ("alone-i" / "batch-i"), so that no cache keyed by the media (the
processor's, the encoder's, the prefix cache's) hands one pass's work to the other. Writes, per request and pass:
the prompt token ids, the greedy tokens and each step's top-5 log-probs, and the prefill chunks the scheduler cut
(``chunks``: [start, length] of each step's share of the prompt; in-process engine only). The caller sets the environment (TANGO_PRUNE_METHOD,
TANGO_PRUNE_DEBUG_DIR, ...); with a debug dir, the dumps of the alone pass go to DIR/alone, the batch's to DIR/batch.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_check import DTYPE, check_parser  # noqa: E402  (Qwen3.5's linear attention runs in bfloat16 only on vLLM's CPU)

QWEN_PROMPT = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n"
TEXTS = ["Describe.", "What moves?", "Count them.", "Where is it?", "Why?", "Say more about the start.", "Go on.", "Colors?"]
# (frames, height, width): every request a different grid, so that a recorded video names its request. The tiny
# processors keep each frame's area near a fixed budget (Qwen2.5-VL: 224^2; Qwen3-VL: 16 x 256^2 over all frames),
# so the grids differ through the aspect ratio and the frame count. At most 448 unpruned tokens a video: the
# encoder cache stock vLLM sizes from its dummy video holds no more.
QWEN3_SHAPES = [(14, 256, 256), (8, 192, 320), (4, 320, 192), (12, 224, 288), (6, 288, 224), (10, 160, 384),
                (2, 256, 256), (14, 320, 160)]
SHAPES = {
    "qwen2_5_vl": [(14, 224, 224), (8, 168, 308), (4, 308, 168), (10, 196, 252), (6, 252, 196), (12, 140, 364),
                   (2, 224, 224), (10, 112, 448)],
    # Qwen3.5's processor is Qwen3-VL's
    "qwen3_vl": QWEN3_SHAPES, "qwen3_5": QWEN3_SHAPES, "qwen3_5_moe": QWEN3_SHAPES,
    # LLaVA-OV resizes every frame to its 112 px input: requests differ by frame count only
    "llava_ov": [(8, 112, 112), (4, 112, 112), (6, 112, 112), (2, 112, 112), (7, 112, 112), (3, 112, 112),
                 (5, 112, 112), (1, 112, 112)],
}
LLAVA_TEXTS = ["w10 w11 w12", "w13", "w14 w15", "w16 w17 w18 w19", "w20", "w21 w22", "w23 w24 w25", "w26"]


def video(shape, seed: int):
    frames, h, w = shape
    rng = np.random.default_rng(seed)
    # drifting smooth blobs plus noise: consecutive frames alike (segments, merges), nothing exactly static
    base = rng.integers(0, 256, (frames + 3, 8, 8, 3)).astype(np.float32)
    up = base.repeat(-(-h // 8), 1).repeat(-(-w // 8), 2)[:, :h, :w]
    px = 0.6 * up[:-3] + 0.4 * up[3:] + rng.normal(0, 8, (frames, h, w, 3))
    px = np.clip(px, 0, 255).astype(np.uint8)
    fps = 2.0
    meta = {"fps": fps, "duration": frames / fps, "total_num_frames": frames, "frames_indices": list(range(frames)),
            "video_backend": "opencv", "do_sample_frames": False}
    return px, meta


def requests(family: str, n: int, tag: str) -> list[dict]:
    shapes = SHAPES[family]
    out = []
    for i in range(n):
        px, meta = video(shapes[i % len(shapes)], seed=100 + i)
        if family == "llava_ov":  # word-level tokenizer of tests/vllm/tiny_llava.py; frames without metadata
            prompt, data = f"<bos> {LLAVA_TEXTS[i % len(LLAVA_TEXTS)]} <video> w30 w31", px
        else:
            prompt, data = QWEN_PROMPT.format(text=TEXTS[i % len(TEXTS)]), (px, meta)
        out.append({"prompt": prompt, "multi_modal_data": {"video": data},
                    "multi_modal_uuids": {"video": [f"{tag}-{i}"]}})
    return out


def record_chunks(llm) -> dict[tuple, list]:
    """{prompt ids: [[start, length], ...]}: each prefill chunk the scheduler hands the model, read off its output
    (test-only: wraps this engine instance's schedule(); needs VLLM_ENABLE_V1_MULTIPROCESSING=0)."""
    sched = llm.llm_engine.engine_core.engine_core.scheduler
    chunks: dict[tuple, list] = {}
    inner = sched.schedule

    def schedule(*args, **kwargs):
        out = inner(*args, **kwargs)
        start = {r.req_id: r.num_computed_tokens for r in out.scheduled_new_reqs}  # before this step's tokens
        cached = out.scheduled_cached_reqs
        start.update(zip(cached.req_ids, cached.num_computed_tokens))
        for rid, n in out.num_scheduled_tokens.items():
            req = sched.requests[rid]
            if start[rid] < req.num_prompt_tokens:
                chunks.setdefault(tuple(req.prompt_token_ids), []).append([start[rid], n])
        return out

    sched.schedule = schedule
    return chunks


def main() -> None:
    ap = check_parser(SHAPES)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=6)
    ap.add_argument("--chunk", type=int, default=None, help="max_num_batched_tokens (small: prompts split in chunks)")
    args = ap.parse_args()

    from vllm import LLM, SamplingParams

    extra = {} if args.rate is None else {"video_pruning_rate": args.rate}
    llm = LLM(model=args.model, enforce_eager=True, max_model_len=4096, dtype=DTYPE.get(args.family, "float32"), seed=0,
              max_num_seqs=args.n, limit_mm_per_prompt={"video": 1, "image": 0},
              **({} if args.chunk is None else {"max_num_batched_tokens": args.chunk}), **extra)
    sp = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, logprobs=5)
    chunks = record_chunks(llm)
    debug = os.environ.get("TANGO_PRUNE_DEBUG_DIR")
    result = {}
    for tag in ("alone", "batch"):
        if debug:  # the plugin reads the folder at each dump
            os.environ["TANGO_PRUNE_DEBUG_DIR"] = os.path.join(debug, tag)
        reqs = requests(args.family, args.n, tag)
        outs = [llm.generate(r, sp, use_tqdm=False)[0] for r in reqs] if tag == "alone" else \
            llm.generate(reqs, sp, use_tqdm=False)
        result[tag] = [{"prompt_token_ids": list(o.prompt_token_ids), "generated": list(o.outputs[0].token_ids),
                        # each step's top 5 (id, log-prob), best first: a shifted position moves these long before
                        # it changes a greedy token of a tiny random model
                        "top5": [sorted(([int(t), float(lp.logprob)] for t, lp in step.items()), key=lambda x: -x[1])[:5]
                                 for step in o.outputs[0].logprobs],
                        "chunks": chunks.pop(tuple(o.prompt_token_ids), [])}
                       for o in outs]
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
