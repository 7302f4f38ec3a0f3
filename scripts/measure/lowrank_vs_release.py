"""Made docs/benchmarks.md's low-rank rows: 3.26x / 4.00x at 32 frames, 4.90x / 6.30x at 256 (exact / fast).

Time Tango (exact and fast) against the authors' release on a shared low-rank base plus noise
(16-rank base, noise 0.5, bf16, 196 x 3584 per frame, r = 0.1, LLaVA-OV sinks), medians of warm runs.

    python scripts/measure/lowrank_vs_release.py PATH/TO/xjtupanda-Tango [--frames 32,256]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from tango_prune import TangoConfig, VideoTokens, prune_video_tokens
from tango_prune.bench.release import load_release


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("release")
    p.add_argument("--frames", default="32,256")
    a = p.parse_args()
    rel = load_release(a.release)
    for T in (int(v) for v in a.frames.split(",")):
        g = torch.Generator().manual_seed(0)
        base = torch.randn(16, 3584, generator=g)
        f = (torch.randn(T, 196, 16, generator=g) @ base + 0.5 * torch.randn(T, 196, 3584, generator=g)).to(torch.bfloat16)
        vt = VideoTokens(f, torch.rand(T, 196, generator=g), (T, 14, 14))
        cfg = TangoConfig(retention=0.1, sink_indices="llava-ov")
        runs = {"exact": lambda: prune_video_tokens(vt, cfg),
                "fast": lambda: prune_video_tokens(vt, cfg.replace(similarity="fast")),
                "release": lambda: rel(vt, cfg)}
        secs = {}
        for name, fn in runs.items():
            fn()
            ts = []
            for _ in range(3 if T <= 64 else 2):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
            secs[name] = statistics.median(ts)
        print(f"{T} frames: release {secs['release']:.3f} s, exact {secs['exact']:.3f} s "
              f"({secs['release'] / secs['exact']:.2f}x), fast {secs['fast']:.3f} s ({secs['release'] / secs['fast']:.2f}x)")


if __name__ == "__main__":
    main()
