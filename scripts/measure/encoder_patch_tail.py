"""Where the encoder stage's fidelity tail comes from, per temporal patch (or frame): the real ViT-S on a clip, the
stage against the stock forward; per patch the share computed past the gate and the 5th percentile of the cosine
between the stage's final features and the stock ones, and over the video the same percentile for reused and for
computed tokens apart. Made docs/encoder.md's "On Qwen's temporal patches" numbers:

    .venv/bin/python scripts/measure/encoder_patch_tail.py --pairs --px 336,392 --taus 0.7,0.85

``--pairs``: each two frames averaged into one, as a Qwen temporal patch embeds them.
"""
import argparse

import torch
import torch.nn.functional as F

from tango_prune.encoders import reuse, vit_s
from tango_prune.video import read_frames, sample_clip

p = argparse.ArgumentParser()
p.add_argument("--clip", default="carphone_pristine")
p.add_argument("--frames", type=int, default=16)
p.add_argument("--px", default="336,392")
p.add_argument("--taus", default="0.7,0.85")
p.add_argument("--halo", type=int, default=1)
p.add_argument("--pairs", action="store_true")
a = p.parse_args()
torch.set_num_threads(2)
vit = vit_s.load()
fr, ts = read_frames(sample_clip(a.clip), a.frames)
if a.pairs:
    fr = ((fr[0::2].float() + fr[1::2].float()) / 2).round().to(torch.uint8)
    ts = (ts[0::2] + ts[1::2]) / 2
for px in map(int, a.px.split(",")):
    stock = vit_s.encode(vit, fr, ts, size=px)
    for tau in map(float, a.taus.split(",")):
        staged, mask = vit_s.encode_reuse(vit, fr, reuse.ReuseConfig(tau=tau, halo=a.halo), ts, size=px)
        cos = F.cosine_similarity(staged.features.float(), stock.features.float(), dim=-1)  # (patches, tokens)
        computed = mask[:, 1:]
        print(f"{a.clip} px {px} tau {tau} halo {a.halo}: cos p5 {cos.flatten().quantile(.05):.3f}, reused tokens "
              f"{cos[~computed].quantile(.05):.3f} ({int((~computed).sum())}), computed {cos[computed].quantile(.05):.3f}")
        print("  per patch computed", " ".join(f"{float(s):.2f}" for s in computed.float().mean(1)))
        print("  per patch cos p5  ", " ".join(f"{float(c.quantile(.05)):.2f}" for c in cos))
