"""A long video through vLLM on a tiny checkpoint, with and without pruning: prompt tokens, wall seconds, peak RSS,
or the engine's error (issue 37). Run with the vLLM venv's python:

    .venv-vllm/bin/python scripts/measure/vllm_long_video.py --model DIR --family qwen2_5_vl --frames 3600 [--rate 0.9]
        [--chunk-frames 32]

DIR: a tiny checkpoint (`python tests/vllm/tiny.py DIR qwen2_5_vl [--wide]`; --wide: a real-width tower in 2 blocks).
--chunk-frames N: the plugin encodes and prunes N temporal patches at a time (TANGO_PRUNE_OPTIONS chunk_frames). Frames of --px pixels (112: 4 x 4 merged tokens
per temporal patch of 2 frames), drifting blobs plus noise, 1 fps. Without --rate the plugin is not loaded (stock).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np


def video(frames: int, px: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = np.empty((frames, px, px, 3), dtype=np.uint8)
    base = rng.integers(0, 256, (8, 8, 3)).astype(np.float32)
    for f in range(frames):  # a frame at a time: no float copy of the whole video
        if f % 30 == 0:
            base = 0.7 * base + 0.3 * rng.integers(0, 256, (8, 8, 3))
        up = base.repeat(-(-px // 8), 0).repeat(-(-px // 8), 1)[:px, :px]
        out[f] = np.clip(up + rng.normal(0, 8, (px, px, 3)), 0, 255).astype(np.uint8)
    meta = {"fps": 1.0, "duration": float(frames), "total_num_frames": frames, "frames_indices": list(range(frames)),
            "video_backend": "opencv", "do_sample_frames": False}
    return out, meta


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--family", default="qwen2_5_vl")
    ap.add_argument("--frames", type=int, default=3600)
    ap.add_argument("--px", type=int, default=112)
    ap.add_argument("--rate", type=float, default=None)
    ap.add_argument("--max-model-len", type=int, default=4096, help="the tiny checkpoints' max_position_embeddings")
    ap.add_argument("--chunk-frames", type=int, default=None)
    a = ap.parse_args()
    if a.rate is None:
        os.environ["VLLM_PLUGINS"] = ""
    if a.chunk_frames:
        os.environ["TANGO_PRUNE_OPTIONS"] = json.dumps({"chunk_frames": a.chunk_frames})
    from vllm import LLM, SamplingParams

    row = {"frames": a.frames, "px": a.px, "rate": a.rate, "chunk_frames": a.chunk_frames}
    t = time.perf_counter()
    try:
        extra = {} if a.rate is None else {"video_pruning_rate": a.rate}
        # the encoder cache must hold one whole video item's embeddings: it is sized from max_num_batched_tokens
        llm = LLM(model=a.model, enforce_eager=True, max_model_len=a.max_model_len, dtype="float32", seed=0,
                  max_num_seqs=1, max_num_batched_tokens=a.max_model_len,
                  limit_mm_per_prompt={"video": 1, "image": 0}, **extra)
        row["engine_s"] = round(time.perf_counter() - t, 1)
        frames, meta = video(a.frames, a.px)
        prompt = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Describe.<|im_end|>\n<|im_start|>assistant\n"
        t = time.perf_counter()
        out = llm.generate({"prompt": prompt, "multi_modal_data": {"video": (frames, meta)}},
                           SamplingParams(max_tokens=4, temperature=0.0))[0]
        row.update(request_s=round(time.perf_counter() - t, 1), prompt_tokens=len(out.prompt_token_ids),
                   generated=list(out.outputs[0].token_ids))
    except Exception as e:  # the point is to record what stops it
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    row["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    print("RESULT " + json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
