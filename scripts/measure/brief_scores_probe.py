"""Made docs/testbed.md's note on why TangoConfig.brief_frames changes nothing on the probe's raw ViT-S tokens at
4x4 (issue 27): per one- and two-frame event of `tango-prune fidelity --brief --brief-n 8` (seed 0), the highest
brief score (core.events.brief_scores, span 2) among the object's tokens in its first frame, and the highest among
all non-object tokens of the clip.

    .venv/bin/python scripts/measure/brief_scores_probe.py [--grids 4x4,8x8] [--n 8]
"""
from __future__ import annotations

import argparse

import torch

from tango_prune.core.events import brief_scores
from tango_prune.encoders import vit_s
from tango_prune.eval import brief
from tango_prune.testbed.data import COLOURS, SHAPES, Backgrounds, shape_mask


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grids", default="4x4,8x8")
    p.add_argument("--n", type=int, default=8)
    a = p.parse_args()
    bg = Backgrounds()
    events = brief.draw_events(bg.window, {s: shape_mask(s) for s in SHAPES}, COLOURS, a.n, [1, 2], 0)
    model = vit_s.load()
    for g in a.grids.split(","):
        grid = brief.GRIDS[g]
        print(f"{g}: (span, object onset's score, best non-object score)")
        for e in events:
            vt = brief.encode(model, e.frames, grid)
            obj = brief.object_tokens(e.frames, e.bare, grid.side)
            T, L = vt.features.shape[:2]
            score = brief_scores(vt.features, 2).flatten()
            first = int(obj.view(T, L).any(1).nonzero()[0])
            onset = torch.zeros(T, L, dtype=torch.bool)
            onset[first] = obj.view(T, L)[first]
            print(f"  {e.span} {float(score[onset.flatten()].max()):+.2f} {float(score[~obj].max()):+.2f}")


if __name__ == "__main__":
    main()
