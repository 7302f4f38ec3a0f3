"""Why does the testbed fail under pruning? Separate lost content from a changed layout (length and positions).

    python scripts/testbed_layout_probe.py --n 150

On the same questions (seed 0), with the tower run once: (a) a share of the video tokens replaced by their frame's
mean token, length and positions unchanged; (b) `random` dropping that share, positions compacted as
LLaVA-OneVision lays them out; (c) the same drop, kept tokens at their original 1-D positions.
"""
from __future__ import annotations

import argparse
import dataclasses

import torch

from tango_prune.eval.accuracy import testbed_qa
from tango_prune.eval.testbed_data import generate
from tango_prune.models.llava_ov import LlavaOnevisionHandle


class OriginalPositions(LlavaOnevisionHandle):
    """Experiment only: kept tokens keep the 1-D positions they had in the full sequence."""

    def positions(self, c, input_ids, attention_mask, kept, kwargs, ctx):
        return {"position_ids": c.source.clamp_min(0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--shares", default="0.2,0.5", help="shares of the video tokens replaced or dropped")
    a = ap.parse_args()
    qa = testbed_qa()
    samples = generate(a.n, seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        h = LlavaOnevisionHandle(qa.model, "none", 1.0)
        enc = [(inp, h.encode_videos(**inp)) for inp in (qa.inputs(s) for s in samples)]

        def score(videos=None):
            ok = 0
            for i, (s, (inp, vts)) in enumerate(zip(samples, enc)):
                ids = {k: v for k, v in inp.items() if k not in ("pixel_values_videos", "video_timestamps")}
                logits = qa.model(**ids, video_tokens=videos[i] if videos else vts).logits[:, -1:].float()
                ok += int(qa.choice(logits) == s.answer)
            return ok / len(samples)

        print(f"all tokens: {score():.3f}")
        for share in (float(x) for x in a.shares.split(",")):
            replaced = []
            for _, vts in enc:
                f = vts[0].features.clone()
                m = torch.rand(f.shape[:2], generator=g) < share
                f[m] = f.mean(1, keepdim=True).expand_as(f)[m]
                replaced.append([dataclasses.replace(vts[0], features=f)])
            print(f"{share:.0%} replaced by the frame mean (same layout): {score(replaced):.3f}")
        h.remove()
        for cls, label in ((LlavaOnevisionHandle, "positions compacted"), (OriginalPositions, "original positions")):
            for share in (float(x) for x in a.shares.split(",")):
                h = cls(qa.model, "random", 1 - share)
                print(f"{share:.0%} dropped at random, {label}: {score():.3f}")
                h.remove()


if __name__ == "__main__":
    main()
