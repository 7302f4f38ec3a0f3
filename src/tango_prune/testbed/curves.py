"""Training curves of testbed runs (``train --dir``) as one picture: training loss (the answer letter's
cross-entropy, a running mean) and held-out accuracy per question type, against the number of clips seen.

    python -m tango_prune.testbed.curves out/testbed_v2/run2 out/testbed_v2/run3 --out docs/testbed_v2_curves.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .data import TYPES

CHANCE_LOSS, CHANCE_ACC = 1.386, 0.25  # uniform over the four letters


def read(run: Path) -> tuple[list[dict], int]:
    """(the curve's records, the run's batch size from its checkpoint; 1 when there is none)."""
    f = run / "curve.jsonl"
    if not f.is_file():
        raise SystemExit(f"no curve.jsonl in {run}; pass a train --dir")
    batch = 1
    if (run / "ckpt.pt").is_file():
        import torch

        batch = int(torch.load(run / "ckpt.pt", weights_only=False, map_location="cpu")["args"]["batch"])
    return [json.loads(x) for x in f.read_text().splitlines() if x.strip()], batch


def plot(runs: list[Path], out: Path, smooth: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.2))
    for run in runs:
        recs, batch = read(run)
        loss = [(r["step"] * batch, r["loss"]) for r in recs if "loss" in r]
        ev = [(r["step"] * batch, r["eval"], r["by_type"]) for r in recs if "eval" in r]
        mean = [sum(v for _, v in loss[max(0, k - smooth + 1) : k + 1]) / len(loss[max(0, k - smooth + 1) : k + 1])
                for k in range(len(loss))]
        ax_loss.plot([x for x, _ in loss], mean, label=run.name)
        ax_acc.plot([x for x, _, _ in ev], [a for _, a, _ in ev], lw=2.5, marker="o", label=f"{run.name}: all types")
        if run == runs[-1]:
            for t in TYPES:
                ax_acc.plot([x for x, _, _ in ev], [b.get(t, float("nan")) for _, _, b in ev], lw=1, ls="--",
                            label=f"{run.name}: {t}", alpha=0.8)
    ax_loss.axhline(CHANCE_LOSS, color="grey", ls=":", label="chance (1.386)")
    ax_acc.axhline(CHANCE_ACC, color="grey", ls=":", label="chance (0.25)")
    ax_loss.set(xlabel="training clips seen", ylabel=f"loss (running mean of {smooth} logs)", ylim=(0.3, 2.0),
                title="training loss")
    ax_acc.set(xlabel="training clips seen", ylabel="held-out accuracy (100 clips)", ylim=(0, 1),
               title="held-out accuracy, all tokens")
    ax_loss.legend(fontsize=8)
    ax_acc.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="train --dir folders (curve.jsonl, ckpt.pt)")
    ap.add_argument("--out", default="testbed_v2_curves.png")
    ap.add_argument("--smooth", type=int, default=10, help="running mean over this many logged losses")
    a = ap.parse_args()
    plot([Path(r) for r in a.runs], Path(a.out), a.smooth)


if __name__ == "__main__":
    main()
