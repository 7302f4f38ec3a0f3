"""Made docs/method.md's choice of TangoConfig.events = 2 (issue 27): on training seed 1 only (the first 150 questions,
all five types, v1's 16-frame clips as eval asks them), tokens as testbed v2's pruner sees them, per weight and ratio:
the object's survival per question type (tango_prune.eval.brief), coverage of all tokens, mean kept count.

    .venv/bin/python scripts/measure/brief_events_tune.py [--n 150] [--tokens out/issue27/v2_seed1_tokens.pt]

--tokens FILE: load the encoded questions from FILE if it exists, else encode and save them there.
"""
from __future__ import annotations

import argparse
import collections
from pathlib import Path

import torch

from tango_prune.eval import brief
from tango_prune.eval.fidelity import coverage
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
    p.add_argument("--weights", default="0,1e-9,0.5,1,2,4", help="events values (1e-9: the salient floor alone)")
    a = p.parse_args()
    if a.tokens and Path(a.tokens).is_file():
        data = torch.load(a.tokens, weights_only=False)[: a.n]
    else:
        data = encode(a.n)
        if a.tokens:
            torch.save(data, a.tokens)
    for r in (0.1, 0.2):
        for w in (float(x) for x in a.weights.split(",")):
            pruner = get_method("tango")(retention=r, events=w)
            by, cov, kept = collections.defaultdict(list), [], []
            for vt, obj, qtype in data:
                out = pruner(vt)
                by[qtype].append(brief.survival(vt.features.reshape(vt.num_tokens, -1), out, obj)["survived"])
                cov.append(coverage(vt, out))
                kept.append(out.num_kept)
            print(f"r {r:g} events {w:g}: " + " ".join(f"{t} {sum(v) / len(v):.2f}" for t, v in by.items())
                  + f" | coverage {sum(cov) / len(cov):.4f} | kept {sum(kept) / len(kept):.1f}", flush=True)


if __name__ == "__main__":
    main()
