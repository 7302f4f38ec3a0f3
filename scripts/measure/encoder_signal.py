"""Which signal at the gate predicts that a token's final state will match its key frame's (issue 36, item 3)?

On a testbed's tower and questions (seed 1, the tuning seed), one stock forward per clip gives every layer's states.
Each candidate signal decides a schedule exactly as the stage does (frame 0 a key frame; a frame in which more than
``key_share`` of the patches fail the signal becomes the next key), over a sweep of thresholds. Per schedule:

- computed: share of patch tokens that run past the gate (what the stage's time follows);
- obj err: over the *object's* tokens (the composited shape covers >= 25% of the patch, from ``object_labels``), the
  mean of 1 - cosine between the token's stock final state and the one it takes (its key frame's where reused, its
  own where computed: 0); the testbeds' questions are about the objects, so this is what costs answers. (A reused
  object token is right where the key frame shows the same object there: only the error counts.)
- err mean / p99 over all tokens, the same error.

The curves (obj err against computed) say which signal spoils the fewest object tokens for the same skip;
accuracy of the winners is then measured with ``tango-prune eval`` (tuned on seed 1, judged on seed 0).

    .venv/bin/python scripts/measure/encoder_signal.py --weights testbed --n 100 --json out/enc/signal_v1.json --png out/enc/signal_v1.png
"""
import argparse
import json

import torch
import torch.nn.functional as F
from tqdm import tqdm

from tango_prune.encoders.reuse import _prefix
from tango_prune.testbed.data import V1, Backgrounds, draw, object_labels
from tango_prune.testbed.prompt import pixel_values
from tango_prune.testbed.qa import weights_qa


def cos(a, b):
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def neighbourhood_min(x, side):
    """(N,) per-patch similarity -> the minimum over each patch's 3 x 3 neighbourhood (a window decision)."""
    g = x.reshape(1, 1, side, side)
    return (-F.max_pool2d(-g, 3, stride=1, padding=1)).reshape(-1)


SIGNALS = {  # name -> similarity of frame t's patches to key frame k's, (N,), from the stock states hs
    "cos@0 (pixels)": lambda hs, t, k, s: cos(hs[0][t], hs[0][k]),
    "cos@1": lambda hs, t, k, s: cos(hs[1][t], hs[1][k]),
    "cos@2 (default)": lambda hs, t, k, s: cos(hs[2][t], hs[2][k]),
    "cos@3": lambda hs, t, k, s: cos(hs[3][t], hs[3][k]),
    "cos@4": lambda hs, t, k, s: cos(hs[4][t], hs[4][k]),
    "cos@2 3x3 min": lambda hs, t, k, s: neighbourhood_min(cos(hs[2][t], hs[2][k]), s),
    "min(cos@0, cos@2)": lambda hs, t, k, s: torch.minimum(cos(hs[0][t], hs[0][k]), cos(hs[2][t], hs[2][k])),
    "1 - relL2@2": lambda hs, t, k, s: 1 - (hs[2][t] - hs[2][k]).float().norm(dim=-1) / hs[2][k].float().norm(dim=-1),
}


THR = (0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)
THRESHOLDS = {"cos@2 3x3 min": (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95),
              "1 - relL2@2": (0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8)}


def schedule(sim, T, thr, key_share):
    """ref (T,), computed (T, N) bool from sim(t, key) -> (N,), as encoders.reuse.schedule decides."""
    ref, comp, key = [0], [None], 0
    for t in range(1, T):
        change = sim(t, key) < thr
        if change.float().mean() > key_share:
            key, change = t, torch.ones_like(change)
        ref.append(key)
        comp.append(change)
    comp[0] = torch.ones_like(comp[1])
    return torch.tensor(ref), torch.stack(comp)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights", default="testbed")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--key-share", type=float, default=0.5)
    p.add_argument("--json")
    p.add_argument("--png")
    a = p.parse_args()
    torch.set_num_threads(2)
    v, qa = weights_qa(a.weights)
    tower = qa.model.model.vision_tower.float()
    pre = _prefix(tower)
    bg = Backgrounds()
    acc = {(n, t): dict(comp=0.0, tok=0, obj=[], err=[]) for n in SIGNALS for t in THRESHOLDS.get(n, THR)}
    for i in tqdm(range(a.n), desc="clips"):
        s = draw(V1, a.seed, i, bg)
        side = v.image // 14
        cover, _ = object_labels(V1, a.seed, i, bg, side)
        cover = torch.from_numpy(cover)
        with torch.no_grad():
            hs = tower(pixel_values(v, s.frames)[0], output_hidden_states=True).hidden_states
        hs = [h[:, pre:] for h in hs]
        T = hs[0].shape[0]
        for name, f in SIGNALS.items():
            sims = {}
            for th in THRESHOLDS.get(name, THR):
                ref, comp = schedule(lambda t, k: sims.setdefault((t, k), f(hs, t, k, side)), T, th, a.key_share)
                r = acc[(name, th)]
                r["comp"] += float(comp.float().sum())
                r["tok"] += comp.numel()
                e = (1 - cos(hs[-1], hs[-1][ref])) * ~comp  # (T, N): the final-state error each token takes
                r["obj"].append(e[cover >= 0.25])
                r["err"].append(e.reshape(-1))
    rows = []
    for (name, th), r in acc.items():
        err, obj = torch.cat(r["err"]), torch.cat(r["obj"])
        rows.append(dict(signal=name, threshold=th, computed=r["comp"] / r["tok"], obj_err=float(obj.mean()),
                         obj_err_p95=float(obj.quantile(0.95)), err_mean=float(err.mean()),
                         err_p99=float(err.quantile(0.99))))
    print(f"{'signal':<20}{'thr':>6}{'computed':>10}{'obj err':>10}{'obj p95':>9}{'err mean':>10}{'err p99':>9}")
    for r in rows:
        print(f"{r['signal']:<20}{r['threshold']:>6}{r['computed']:>10.3f}{r['obj_err']:>10.4f}{r['obj_err_p95']:>9.4f}"
              f"{r['err_mean']:>10.4f}{r['err_p99']:>9.4f}")
    if a.json:
        json.dump(dict(weights=a.weights, seed=a.seed, n=a.n, key_share=a.key_share, rows=rows), open(a.json, "w"), indent=1)
    if a.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        for name in SIGNALS:
            rs = sorted((r for r in rows if r["signal"] == name), key=lambda r: r["computed"])
            x = [r["computed"] for r in rs]
            ax[0].plot(x, [r["obj_err"] for r in rs], "o-", label=name, ms=3)
            ax[1].plot(x, [r["err_mean"] for r in rs], "o-", label=name, ms=3)
        ax[0].set(xlabel="computed share", ylabel="object tokens: mean final-state error", title=f"{a.weights}, seed {a.seed}, {a.n} clips")
        ax[1].set(xlabel="computed share", ylabel="all tokens: mean final-state error")
        ax[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(a.png, dpi=110)


if __name__ == "__main__":
    main()
