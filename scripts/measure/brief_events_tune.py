"""Made docs/method.md's choice of TangoConfig(brief_frames=1, brief_tau=0.5) (issue 27): on training seed 1 only
(the first 150 questions, all five types, v1's 16-frame clips as eval asks them), tokens as testbed v2's pruner sees
them, per setting and ratio: the object's survival per question type (tango_prune.eval.brief) and the tokens the
setting adds per video, per type (a brief-event remedy should add to brief_shape videos and little elsewhere).

    .venv/bin/python scripts/measure/brief_events_tune.py [--n 150] [--tokens out/issue27/v2_seed1_tokens.pt]

--tokens FILE: load the encoded questions from FILE if it exists, else encode and save them there.
The accuracy half of the tuning is an eval on the same seed:
    tango-prune eval --model testbed-v2 --methods tango,tango:brief_frames=2,tango:brief_frames=1 \
        --retention 0.1,0.2 --n 200 --seed 1
"""
from __future__ import annotations

import argparse
import collections
from pathlib import Path

import torch

from tango_prune.eval import brief
from tango_prune.methods import get_method


def encode(n: int, seed: int = 1):
    from tango_prune.models import apply
    from tango_prune.testbed.data import V1, Backgrounds, draw, object_labels
    from tango_prune.testbed.qa import testbed_qa
    from tango_prune.testbed.variants import V2

    bg, qa = Backgrounds(), testbed_qa(V2)
    base = apply(qa.model, method="none", retention=1.0, positions="original")
    out = []
    try:
        for i in range(n):
            s = draw(V1, seed, i, bg)
            vt = base.encode_videos(**qa.inputs(s))[0]
            cover, _ = object_labels(V1, seed, i, bg, V2.grid)
            cover = torch.from_numpy(cover)
            best = cover == cover.max(dim=1, keepdim=True).values  # as brief.object_tokens
            out.append((vt, ((cover >= 0.25) | (best & (cover > 0))).flatten(), s.qtype))
    finally:
        base.remove()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=150)
    p.add_argument("--tokens")
    p.add_argument("--settings", default="0/0.5,1/0.5,2/0.5,1/0.7,2/0.7,2/0.3", help="brief_frames/brief_tau pairs")
    a = p.parse_args()
    if a.tokens and Path(a.tokens).is_file():
        data = torch.load(a.tokens, weights_only=False)[: a.n]
    else:
        data = encode(a.n)
        if a.tokens:
            torch.save(data, a.tokens)
    for r in (0.1, 0.2):
        for setting in a.settings.split(","):
            frames, tau = setting.split("/")
            pruner = get_method("tango")(retention=r, brief_frames=int(frames), brief_tau=float(tau))
            by, added = collections.defaultdict(list), collections.defaultdict(list)
            for vt, obj, qtype in data:
                out = pruner(vt)
                by[qtype].append(brief.survival(vt.features.reshape(vt.num_tokens, -1), out, obj)["survived"])
                added[qtype].append(out.info.get("brief_added", 0))
            print(f"r {r:g} brief_frames {frames} tau {tau}: survival / tokens added per video: "
                  + " ".join(f"{t} {sum(v) / len(v):.2f} / +{sum(added[t]) / len(added[t]):.2f}" for t, v in by.items()),
                  flush=True)


if __name__ == "__main__":
    main()
