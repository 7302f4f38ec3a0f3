"""The pruner on its worst input (one long segment, nothing static: bench-pruner --scene moving) with the release's
whole-segment context merge and with merge_window_frames W: seconds, peak RSS rise and the kept set's Jaccard
against the whole-segment merge (where that one was run).

    python scripts/measure/merge_window.py --frames 256,1024 --windows none,32,64 --whole-max 256 --json out/mw.json
"""
from __future__ import annotations

import argparse
import json

import torch

from tango_prune.hardware import describe_cpu
from tango_prune import TangoConfig, prune_video_tokens
from tango_prune.bench.pruner import time_call
from tango_prune.bench.synthetic import noise_video


def jaccard(a, b) -> float:
    a, b = set(a.tolist()), set(b.tolist())
    return len(a & b) / max(1, len(a | b))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", default="256,1024")
    ap.add_argument("--windows", default="none,32,64")
    ap.add_argument("--whole-max", type=int, default=256, help="run the whole-segment merge up to this many frames")
    ap.add_argument("--similarity", default="exact")
    ap.add_argument("--json")
    a = ap.parse_args()
    cpu = describe_cpu()
    rows = []
    for T in map(int, a.frames.split(",")):
        vt = noise_video(T, 14, 3584, dtype=torch.bfloat16, rank=32, noise=0.6)
        ref = None
        for w in a.windows.split(","):
            win = None if w == "none" else int(w)
            if win is None and T > a.whole_max:
                continue
            cfg = TangoConfig(retention=0.1, sink_indices="llava-ov", merge_window_frames=win, similarity=a.similarity)
            sec, out, peak, rise = time_call(lambda: prune_video_tokens(vt, cfg), 1)
            ref = out if win is None else ref
            rows.append(dict(frames=T, window=win, seconds=round(sec, 2), peak_rise_gb=round(rise, 2),
                             kept=out.num_kept, segments=out.segments,
                             jaccard_vs_whole=None if ref is None else round(jaccard(out.index, ref.index), 4)))
            print(f"{T:5d} frames  window {str(win):>5}  {sec:7.2f} s  rise {rise:5.2f} GB  kept {out.num_kept}  "
                  f"segments {out.segments}  jaccard vs whole {rows[-1]['jaccard_vs_whole']}", flush=True)
        del vt
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"cpu": cpu, "similarity": a.similarity, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
