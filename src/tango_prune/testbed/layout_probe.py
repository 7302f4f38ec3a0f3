"""Why does the testbed fail under pruning? Separate lost content from a changed layout (length and positions).

    python -m tango_prune.testbed.layout_probe --n 150 [--weights SPEC] [--methods tango,uniform,random,topk]

On the same questions (seed 0), with the tower run once: (a) a share of the video tokens replaced by their frame's
mean token, length and positions unchanged; (b) `random` dropping that share, positions compacted as
LLaVA-OneVision lays them out (what the release and our adapter do); (c) the same drop, every kept token and every
text token at the 1-D position it had in the full sequence (``apply(..., positions="original")``); then (d) each
of --methods at 10% under (b) and (c).
"""
from __future__ import annotations

import argparse
import dataclasses

import torch

from tango_prune.models.llava_ov import LlavaOnevisionHandle
from tango_prune.testbed.data import generate
from tango_prune.testbed.qa import WEIGHTS_HELP, weights_qa


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--shares", default="0.2,0.5", help="shares of the video tokens replaced or dropped")
    ap.add_argument("--methods", default="tango,uniform,random,topk", help="methods compared at 10%%")
    ap.add_argument("--weights", default="testbed", help=WEIGHTS_HELP)
    a = ap.parse_args()
    v, qa = weights_qa(a.weights)
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

        print(f"all tokens: {score():.3f}", flush=True)
        for share in (float(x) for x in a.shares.split(",")):
            replaced = []
            for _, vts in enc:
                f = vts[0].features.clone()
                m = torch.rand(f.shape[:2], generator=g) < share
                f[m] = f.mean(1, keepdim=True).expand_as(f)[m]
                replaced.append([dataclasses.replace(vts[0], features=f)])
            print(f"{share:.0%} replaced by the frame mean (same layout): {score(replaced):.3f}")
        h.remove()
        runs = [("random", 1 - float(x)) for x in a.shares.split(",")] + [(m, 0.1) for m in a.methods.split(",") if m]
        for mode, label in (("compact", "positions compacted"), ("original", "original positions")):
            for method, r in runs:
                h = LlavaOnevisionHandle(qa.model, method, r, positions=mode)
                print(f"{method} keeping {r:.0%}, {label}: {score():.3f}", flush=True)
                h.remove()


if __name__ == "__main__":
    main()
