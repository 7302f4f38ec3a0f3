"""How much can any pruner keep on the testbed? An object oracle against real methods, same questions.

    python -m tango_prune.testbed.oracle --n 200 --retention 0.1,0.2 [--methods tango,uniform,random] [--weights SPEC]

The oracle knows where the composited object is (the generator regenerates each clip without it): at ratio r it
keeps the tokens the object covers most (a token counts when over 5% of its cell is object), up to the budget
round(r * T * L), and spends what is left on an even spread over the other tokens. It bounds what saliency-driven
selection can reach on these questions; if it falls short of the full-token accuracy at 10%, the testbed itself
needs more than 10% of its tokens. Positions as `tango-prune eval` uses for the testbed (original).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from tango_prune.methods.common import exact_count, finish
from tango_prune.models.llava_ov import LlavaOnevisionHandle
from tango_prune.testbed import data as td
from tango_prune.testbed.qa import WEIGHTS_HELP, weights_qa


def oracle_index(fraction: np.ndarray, budget: int) -> torch.Tensor:
    """Flat indices: object tokens by coverage first, then an even spread over the rest."""
    f = fraction.reshape(-1).astype(np.float32)
    obj = np.nonzero(f > 0.05)[0]
    obj = obj[np.argsort(-f[obj], kind="stable")][:budget]
    rest = np.setdiff1d(np.arange(f.size), obj)
    fill = rest[np.linspace(0, len(rest) - 1, budget - len(obj)).round().astype(int)] if budget > len(obj) else []
    return torch.from_numpy(np.sort(np.concatenate([obj, np.asarray(fill, dtype=obj.dtype)])))


class OracleHandle(LlavaOnevisionHandle):
    """Experiment only: prunes each call to ``self.index`` (set per question)."""

    index: torch.Tensor

    def prune_one(self, vt):
        return finish(vt, self.index, info={"method": "object-oracle"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retention", default="0.1,0.2")
    ap.add_argument("--methods", default="tango,uniform,random")
    ap.add_argument("--weights", default="testbed", help=WEIGHTS_HELP)
    a = ap.parse_args()
    v, qa = weights_qa(a.weights)
    bg = td.Backgrounds(None)
    samples = td.generate(a.n, seed=a.seed, bg=bg)
    fractions = [td.object_labels(td.V1, a.seed, i, bg, v.grid)[0] for i in range(len(samples))]
    with torch.no_grad():
        h = LlavaOnevisionHandle(qa.model, "none", 1.0)
        enc = [(inp, h.encode_videos(**inp)) for inp in (qa.inputs(s) for s in samples)]
        h.remove()

        def score(handle, per_sample=None):
            ok, by = 0, {}
            for i, (s, (inp, vts)) in enumerate(zip(samples, enc)):
                if per_sample is not None:
                    per_sample(handle, i, vts[0])
                ids = {k: v for k, v in inp.items() if k not in ("pixel_values_videos", "video_timestamps")}
                right = int(qa.choice(qa.model(**ids, video_tokens=vts).logits[:, -1:].float()) == s.answer)
                ok += right
                by.setdefault(s.qtype, []).append(right)
            return f"{ok / len(samples):.3f}  " + " ".join(f"{t} {sum(v) / len(v):.2f}" for t, v in by.items())

        with LlavaOnevisionHandle(qa.model, "none", 1.0) as h:
            print(f"all tokens          {score(h)}", flush=True)
        for r in (float(x) for x in a.retention.split(",")):
            def set_index(handle, i, vt, r=r):
                handle.index = oracle_index(fractions[i], exact_count(r, vt.num_tokens))

            with OracleHandle(qa.model, "none", 1.0, positions=v.positions) as h:
                print(f"object oracle @ {r:g}  {score(h, set_index)}", flush=True)
            for m in (x for x in a.methods.split(",") if x):
                with LlavaOnevisionHandle(qa.model, m, r, positions=v.positions) as h:
                    print(f"{m} @ {r:g}{' ' * max(1, 13 - len(m))}{score(h)}", flush=True)


if __name__ == "__main__":
    main()
