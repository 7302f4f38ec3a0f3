"""stream.TangoStream (chunk by chunk) against prune_video_tokens on the whole video: kept-set Jaccard, segments
and seconds, on synthetic video at a real shape (196 x 3584 bf16): scenes of 4-24 frames with a still background
(bench-pruner's default) and the worst input (one long segment, nothing static: --scene moving).

    python scripts/measure/stream_vs_whole.py --frames 256 --chunks 16,32,64 --json out/stream_vs_whole.json
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from tango_prune.hardware import describe_cpu
from tango_prune import TangoConfig, VideoTokens, prune_video_tokens
from tango_prune.bench.synthetic import noise_video, synthetic_video
from tango_prune.stream import prune_video_stream


def jaccard(a, b) -> float:
    a, b = set(a.tolist()), set(b.tolist())
    return len(a & b) / max(1, len(a | b))


def chunks(vt: VideoTokens, c: int):
    T = vt.grid[0]
    for a in range(0, T, c):
        n = min(c, T - a)
        yield VideoTokens(vt.features[a : a + n], vt.saliency[a : a + n], (n, *vt.grid[1:]), vt.timestamps[a : a + n])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=256)
    ap.add_argument("--chunks", default="16,32,64")
    ap.add_argument("--max-carry", type=int, default=256)
    ap.add_argument("--json")
    a = ap.parse_args()
    rows = []
    inputs = {"scenes": synthetic_video(a.frames), "moving": noise_video(a.frames, rank=32, noise=0.6)}
    for name, vt in inputs.items():
        for budget in ("reference", "exact"):
            cfg = TangoConfig(retention=0.1, sink_indices="llava-ov", budget=budget)
            t = time.perf_counter()
            whole = prune_video_tokens(vt, cfg)
            rows.append(dict(input=name, budget=budget, chunk=None, seconds=round(time.perf_counter() - t, 2),
                             kept=whole.num_kept, segments=len(whole.segments), jaccard=1.0))
            print(rows[-1], flush=True)
            for c in map(int, a.chunks.split(",")):
                t = time.perf_counter()
                got = prune_video_stream(chunks(vt, c), cfg, max_carry=a.max_carry)
                rows.append(dict(input=name, budget=budget, chunk=c, seconds=round(time.perf_counter() - t, 2),
                                 kept=got.num_kept, segments=len(got.segments),
                                 same_segments=got.segments == whole.segments,
                                 jaccard=round(jaccard(got.index, whole.index), 4)))
                print(rows[-1], flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"cpu": describe_cpu(),
                       "frames": a.frames, "max_carry": a.max_carry, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
