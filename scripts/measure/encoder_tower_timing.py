"""Made docs/benchmarks.md's encoder-stage overhead table: the stage on a random-weight SigLIP-so400m tower (LLaVA-OV's,
bf16) at given computed shares (random patterns, frame 0 a key frame; 1.0 = every frame a key frame) against the
stock forward, optionally beside another version of encoders/reuse.py in the same run (old and new side by side):

    git show 450723b:src/tango_prune/encoders/reuse.py > /tmp/reuse_old.py
    .venv/bin/python scripts/measure/encoder_tower_timing.py --frames 8 --shares 1.0,0.7,0.3 --old /tmp/reuse_old.py
"""
import argparse
import importlib.util
import sys
import time

import torch
from transformers import SiglipVisionConfig, SiglipVisionModel

from tango_prune.bench.archs import SIGLIP
from tango_prune.encoders import reuse

p = argparse.ArgumentParser()
p.add_argument("--frames", type=int, default=8)
p.add_argument("--shares", default="1.0,0.7,0.5,0.3,0.1")
p.add_argument("--old", help="another reuse.py to time beside the installed one")
a = p.parse_args()
versions = {"stage": reuse}
if a.old:
    spec = importlib.util.spec_from_file_location("reuse_old", a.old)
    old = sys.modules["reuse_old"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    versions = {"old": old, "new": reuse}
torch.manual_seed(0)
m = SiglipVisionModel(SiglipVisionConfig(**SIGLIP)).to(torch.bfloat16).eval()
with torch.no_grad():
    for w in m.parameters():
        if w.dim() > 1:
            w.normal_(0, 0.02)  # no uninitialised memory (denormals would distort the timings)
tower = getattr(m, "vision_model", m)
T, N = a.frames, (SIGLIP["image_size"] // SIGLIP["patch_size"]) ** 2
px = torch.randn(T, 3, SIGLIP["image_size"], SIGLIP["image_size"], dtype=torch.bfloat16)


def timed(f):
    f()  # warm-up
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


with torch.inference_mode():
    stock = timed(lambda: tower(px, output_hidden_states=True))
    print(f"{T} frames, SigLIP-so400m bf16, bf16 native: {torch.cpu._is_avx512_bf16_supported()}; stock {stock:.2f} s")
    last = SIGLIP["num_hidden_layers"]
    for share in map(float, a.shares.split(",")):
        pattern = torch.ones(T, N, dtype=torch.bool) if share == 1.0 else torch.rand(T, N) < share
        pattern[0] = True
        cells, outs = [], []
        for name, mod in versions.items():
            run = lambda mod=mod: mod.encode(tower, px, mod.ReuseConfig(), keep={last}, computed=pattern)  # noqa: E731
            s = timed(run)
            outs.append(run()[0][last])
            cells.append(f"{name} {s:.2f} s ({stock / s:.2f}x)")
        same = all(torch.equal(outs[0], o) for o in outs[1:])
        print(f"computed {float(pattern.float().mean()):.2f}: " + "  ".join(cells) + ("" if len(outs) < 2 else f"  same output: {same}"))
