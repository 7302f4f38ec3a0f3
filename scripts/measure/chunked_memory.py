"""Peak memory and time of apply()'s whole-video path against chunk_frames, by video length (issue 37).

A real-width LLaVA-OV-0.5B (SigLIP 1152 wide, 26 layers; Qwen2-0.5B cut to --llm-layers layers) with random bf16
weights, frames of --px pixels (a modest resolution: 112 px = 8 x 8 patches, 16 pooled tokens a frame), Tango at 10%.
Each (frames, mode) runs in a fresh process (peak RSS is per process): generate one token, report wall seconds and
peak RSS. The whole-video path encodes every frame in one tower call and holds every feature; chunk_frames holds one
chunk's activations and the kept rows.

    python scripts/measure/chunked_memory.py --frames 64,256,1024 --chunk 32 --json out/chunked_memory.json

``--encoder reuse`` turns the encoder stage on in both paths (random pixels: nearly every frame a key frame, so the
stage's own bookkeeping at its largest).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(frames: int, chunk: int | None, px: int, llm_layers: int, encoder: str | None = None) -> dict:
    import torch

    from tango_prune.bench.archs import build
    from tango_prune.models import apply

    torch.manual_seed(0)
    model, _ = build("llava-ov-0.5b", torch.bfloat16, layers=llm_layers, image_size=px)
    side = -(-(px // 14) // 2)
    video = model.config.video_token_id
    ids = torch.tensor([[1, 2] + [video] * (frames * side * side + 1) + [4, 5]])
    pv = torch.randn(1, frames, 3, px, px, dtype=torch.bfloat16)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t = time.perf_counter()
    with apply(model, "tango", 0.1, chunk_frames=chunk, encoder=encoder) as h, torch.no_grad():
        model.generate(input_ids=ids, pixel_values_videos=pv, max_new_tokens=1, do_sample=False)
        kept = h.last_stats[0]["tokens_kept"]
    sec = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return dict(frames=frames, chunk=chunk, encoder=encoder, seconds=round(sec, 2), peak_rss_gb=round(peak, 2),
                before_gb=round(base, 2), pixels_gb=round(pv.numel() * 2 / 2**30, 2), kept=kept)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", default="64,256,1024")
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--px", type=int, default=112)
    ap.add_argument("--llm-layers", type=int, default=2)
    ap.add_argument("--whole-max", type=int, default=1024, help="run the whole-video path up to this many frames")
    ap.add_argument("--encoder", help="the encoder stage in both paths, e.g. reuse")
    ap.add_argument("--json")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # frames,chunk: the child process
    a = ap.parse_args()
    if a.one:
        f, c = a.one.split(",")
        print(json.dumps(one(int(f), None if c == "none" else int(c), a.px, a.llm_layers, a.encoder)))
        return
    from tango_prune.hardware import describe_cpu

    rows = []
    for f in map(int, a.frames.split(",")):
        for c in ([None] if f <= a.whole_max else []) + [a.chunk]:
            p = subprocess.run([sys.executable, __file__, "--one", f"{f},{c or 'none'}", "--px", str(a.px),
                                "--llm-layers", str(a.llm_layers)] + (["--encoder", a.encoder] if a.encoder else []),
                               capture_output=True, text=True)
            row = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else \
                dict(frames=f, chunk=c, error=f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
            rows.append(row)
            print(row, flush=True)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"cpu": describe_cpu(),
                       "px": a.px, "llm_layers": a.llm_layers, "encoder": a.encoder, "results": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
