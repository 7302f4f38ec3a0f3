"""Made docs/method.md's "Brief events" table of survival on testbed v2's own pruner inputs (issue 27): eval's
brief_shape questions (seed 0, questions 0, 5, 10, ...), tokens as v2's pruner sees them (tower, projector, 2 x 2
pooling: 16 frames x 4 x 4 x 576), the object's tokens from the generator's truth (data.object_labels), survival as
tango_prune.eval.brief defines it, per method at r = 0.1, and for Tango where its segmentation put the object.

    .venv/bin/python scripts/measure/brief_events_v2_tokens.py [--n 100] [--seed 0] [--retention 0.1] [--tokens FILE]

--tokens FILE: load the encoded questions from FILE if it exists (a list of (VideoTokens, object mask, ...)), else
encode and save them there.

Tuning data for the remedy was seed 1 (--seed 1); seed 0 is eval's and served only for the diagnosis and the judging.
"""
from __future__ import annotations

import argparse

import torch

from tango_prune.config import TangoConfig
from tango_prune.eval import brief
from tango_prune.methods import get_method
from tango_prune.models import apply
from tango_prune.testbed.data import V1, Backgrounds, draw, object_labels
from tango_prune.testbed.qa import testbed_qa
from tango_prune.testbed.variants import V2

METHODS = ("tango", "tango:budget=exact", "tango:static_merge=off", "tango:segment=none", "tango:segment=fastvid",
           "tango:context_ratio=0", "tango:strope=off", "tango:brief_frames=1",
           "tango:brief_frames=1:budget=exact", "tango:brief_frames=2", "holitom", "vidcom2", "evs", "dycoke",
           "divprune", "flashvid", "fastvid", "topk", "uniform", "random")


def encode(n: int, seed: int):
    bg, qa = Backgrounds(), testbed_qa(V2)
    base = apply(qa.model, method="none", retention=1.0, positions="original")
    out = []
    try:
        for i in range(0, 5 * n, 5):  # type i % 5 == 0: brief_shape
            s = draw(V1, seed, i, bg)
            vt = base.encode_videos(**qa.inputs(s))[0]
            cover, _ = object_labels(V1, seed, i, bg, V2.grid)
            cover = torch.from_numpy(cover)
            best = cover == cover.max(dim=1, keepdim=True).values  # as brief.object_tokens
            out.append((vt, ((cover >= 0.25) | (best & (cover > 0))).flatten()))
    finally:
        base.remove()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retention", type=float, default=0.1)
    p.add_argument("--tokens", help="cache of the encoded questions (see the docstring)")
    a = p.parse_args()
    from pathlib import Path

    if a.tokens and Path(a.tokens).is_file():
        data = [(d[0], d[1]) for d in torch.load(a.tokens, weights_only=False)][: a.n]
    else:
        data = encode(a.n, a.seed)
        if a.tokens:
            torch.save(data, a.tokens)
    print(f"| method | survived | kept | cosine | tokens kept |  (n = {len(data)}, seed {a.seed}, r = {a.retention:g})")
    print("|---|---|---|---|---|")
    from tango_prune.methods import resolve_methods

    for label, name, opts in resolve_methods(",".join(METHODS)):
        pruner = get_method(name)(retention=a.retention, **opts)
        s = [brief.survival(vt.features.reshape(vt.num_tokens, -1), out := pruner(vt), obj) | {"k": out.num_kept}
             for vt, obj in data]
        m = {k: sum(float(x[k]) for x in s) / len(s) for k in ("survived", "kept", "cosine", "k")}
        print(f"| {label} | {m['survived']:.2f} | {m['kept']:.2f} | {m['cosine']:.3f} | {m['k']:.1f} |")
    cfg = TangoConfig.release(retention=a.retention)
    d = [brief.tango_diagnosis(vt, obj, cfg) for vt, obj in data]
    surv = [brief.survival(vt.features.reshape(vt.num_tokens, -1), get_method("tango")(retention=a.retention)(vt), obj)
            ["survived"] for vt, obj in data]
    for key in ("static", "longer_segment"):
        yes = [s for s, x in zip(surv, d) if x[key]]
        no = [s for s, x in zip(surv, d) if not x[key]]
        rate = lambda v: f"{sum(v) / len(v):.2f}" if v else "-"  # noqa: E731
        print(f"tango, object {key}: {len(yes)} of {len(d)} events (survived {rate(yes)}; otherwise {rate(no)})")


if __name__ == "__main__":
    main()
