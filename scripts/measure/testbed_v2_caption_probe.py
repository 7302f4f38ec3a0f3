"""Made the data card's caption-probe table for testbed_v2.pt: shape names 1.000, place words 0.624, frames 0.721.

What testbed v2 can and cannot read: teacher-forced on held-out cached clips, the top-1 accuracy of its caption
tokens (train --caption) by kind: the shape's name, the quadrant, the way of motion, frame numbers, the count.
A model that names shapes but not places or frames reads content but not where or when it is.

    python scripts/measure/testbed_v2_caption_probe.py --weights src/tango_prune/testbed/testbed_v2.pt --clips 100
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from tango_prune.testbed import data as td
from tango_prune.testbed.batch import batch_embeds, pool_frames, reply_ids
from tango_prune.testbed.model import load
from tango_prune.testbed.variants import V2


def kind(prev: str, word: str, nxt: str) -> str | None:
    w, p, n = word.strip().lower(), prev.strip().lower(), nxt.strip().lower()
    if w in td.SHAPES:
        return "shape"
    if w in ("top", "bottom") or (w in ("left", "right") and p in ("top", "bottom")):
        return "place"
    if p == "moving" and w in td.DIRECTIONS:
        return "motion"
    if w.isdigit():
        return "count" if n.startswith("appearance") else "frame number"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(V2.weights))
    ap.add_argument("--cache", default="out/testbed_v2/cache")
    ap.add_argument("--clips", type=int, default=100, help="the first CLIPS cached clips (training's held-out set)")
    ap.add_argument("--json")
    a = ap.parse_args()
    root = Path(a.cache)
    meta = json.loads((root / "meta.json").read_text())
    feats = np.load(root / "feats.npy", mmap_mode="r")
    cover, shapes = np.load(root / "masks.npy"), np.load(root / "shapes.npy")
    model, tok = load(V2, a.weights)
    lm = model.model.language_model
    dtype = next(model.parameters()).dtype
    hits: dict[str, list[int]] = defaultdict(list)
    with torch.no_grad():
        for s in range(0, a.clips, 4):
            idx = range(s, min(s + 4, a.clips))
            replies = [reply_ids(V2, meta[i], cover[i, : meta[i]["frames"]].astype(np.float32),
                                 shapes[i, : meta[i]["frames"]], tok) for i in idx]
            f = [torch.from_numpy(feats[i, : meta[i]["frames"]].astype(np.float32)).to(dtype) for i in idx]
            emb, mask, pos, _ = batch_embeds(model, V2, pool_frames(model, f), [meta[i] for i in idx], tok, replies)
            h = lm(inputs_embeds=emb, attention_mask=mask, position_ids=pos).last_hidden_state
            n = h.shape[1]
            for b, r in enumerate(replies):
                pred = model.lm_head(h[b, n - len(r) - 1 : n - 1]).argmax(-1).tolist()
                words = [tok.decode([t]) for t in r]
                for j, (t, p) in enumerate(zip(r, pred)):
                    k = "letter" if j == 0 else kind(words[j - 1], words[j], words[j + 1] if j + 1 < len(r) else "")
                    if k:
                        hits[k].append(int(t == p))
                    hits["all caption tokens" if j else "letter (all types)"].append(int(t == p))
    hits.pop("letter", None)
    rows = {k: (sum(v) / len(v), len(v)) for k, v in sorted(hits.items())}
    print(f"{'token kind':<22}{'top-1':>7}{'tokens':>8}   ({a.clips} held-out clips, teacher forced, {a.weights})")
    for k, (acc, n) in rows.items():
        print(f"{k:<22}{acc:>7.3f}{n:>8}")
    if a.json:
        Path(a.json).write_text(json.dumps({k: {"top1": acc, "tokens": n} for k, (acc, n) in rows.items()}, indent=1))


if __name__ == "__main__":
    main()
