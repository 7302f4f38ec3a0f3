"""Train a testbed on this CPU: v1 (``--testbed testbed``, the default) or v2 (``--testbed testbed-v2``).

    python -m tango_prune.testbed.train cache --testbed testbed-v2 --n 4000 --out out/testbed_v2/cache   # once
    python -m tango_prune.testbed.train masks --testbed testbed-v2 --out out/testbed_v2/cache   # --aux/--caption targets
    python -m tango_prune.testbed.train train --testbed testbed-v2 --dir out/testbed_v2/run --steps 2000 --aux 1
    python -m tango_prune.testbed.train train --testbed testbed-v2 --dir out/testbed_v2/run --resume   # go on

``cache`` runs the frozen tower once per generated clip (the variant's frame size and clips) and stores
hidden_states[-1] without CLS, (T, patches, 384) fp16 per clip, in one memmap padded to the longest clip; meta.json
holds each clip's question, options, answer, type and frame count. Both resume where a stopped run ended. ``train``
is loop.py. Every flag left out takes the variant's default (``variants.V1.train`` / ``V2.train``). Held-out clips:
the first --held cached ones; training uses seed 1, ``tango-prune eval`` seed 0.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..hardware import default_dtype
from . import data, variants
from .model import tower_state, vision_config
from .prompt import pixel_values


def cache(args) -> None:
    from transformers import Dinov2Model

    v = variants.get(args.testbed)
    out = Path(args.out or v.train["cache"])
    out.mkdir(parents=True, exist_ok=True)
    dtype = default_dtype()  # bf16 where the CPU has it natively (the committed caches), else fp32 (~10x faster there)
    tower = Dinov2Model(vision_config(v))
    tower.load_state_dict(tower_state(v), strict=False)
    tower = tower.to(dtype).eval()
    tower.config._attn_implementation = "eager"  # measured here: 0.63 s per clip vs 0.94 s with sdpa (bf16, 2 cores)
    meta_file = out / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else []
    patches = (v.image // variants.PATCH) ** 2
    feats = np.lib.format.open_memmap(out / "feats.npy", mode="r+" if meta else "w+", dtype=np.float16,
                                      shape=(args.n, v.clips.frames[1], patches, 384))
    if feats.shape[0] != args.n:
        raise SystemExit(f"{out} holds a cache for {feats.shape[0]} clips; pass --n {feats.shape[0]} or a new --out")
    bg = data.Backgrounds(None)
    t0 = time.time()
    for i in range(len(meta), args.n):
        s = data.draw(v.clips, args.seed, i, bg)
        with torch.no_grad():
            hs = tower(pixel_values(v, s.frames)[0].to(dtype), output_hidden_states=True).hidden_states[-1]
        feats[i, : len(hs)] = hs[:, 1:].float().numpy().astype(np.float16)
        meta.append({"question": s.question, "options": s.options, "answer": s.answer, "qtype": s.qtype,
                     "frames": int(s.frames.shape[0])})
        if (i + 1) % 50 == 0 or i + 1 == args.n:
            feats.flush()
            meta_file.write_text(json.dumps(meta))
            print(f"{i + 1}/{args.n} clips, {time.time() - t0:.0f} s", flush=True)


def masks(args) -> None:
    """Per cached clip the training-only targets, padded to the longest clip: each pooled token's object coverage
    (masks.npy, (n, T, grid * grid) fp16) and each frame's shape (shapes.npy, (n, T) int8, -1: none), regenerated
    from the clip's seed (data.object_labels). Resumes where the files end."""
    v = variants.get(args.testbed)
    root = Path(args.out or v.train["cache"])
    meta = json.loads((root / "meta.json").read_text())
    n = len(meta) if args.n is None else args.n
    T, cells = v.clips.frames[1], v.grid**2
    path, spath = root / "masks.npy", root / "shapes.npy"
    done = np.load(path) if path.is_file() else np.zeros((0, T, cells), np.float16)
    sdone = np.load(spath) if spath.is_file() else np.zeros((0, T), np.int8)
    start = min(len(done), len(sdone))
    fr = np.zeros((n - start, T, cells), np.float16)
    sh = np.full((n - start, T), -1, np.int8)
    bg = data.Backgrounds(None)
    for k, i in enumerate(range(start, n)):
        f, s = data.object_labels(v.clips, args.seed, i, bg, v.grid)
        if len(f) != meta[i].get("frames", T):
            raise SystemExit(f"clip {i}: {len(f)} frames regenerated, {meta[i]['frames']} cached; pass the cache's --seed")
        fr[k, : len(f)], sh[k, : len(s)] = f, s
    np.save(path, np.concatenate([done[:start], fr]))
    np.save(spath, np.concatenate([sdone[:start], sh]))
    print(f"masks and shapes for {n} clips", flush=True)


def _defaults(args) -> argparse.Namespace:
    """Every train flag left out takes the variant's default (None there: --lm-lr follows --lr, --shape-aux --aux)."""
    for k, default in variants.get(args.testbed).train.items():
        if getattr(args, k) is None:
            setattr(args, k, default)
    args.lm_lr = args.lr if args.lm_lr is None else args.lm_lr
    args.shape_aux = args.aux if args.shape_aux is None else args.shape_aux
    return args


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    which = argparse.ArgumentParser(add_help=False)
    which.add_argument("--testbed", default="testbed", choices=list(variants.VARIANTS))
    c = sub.add_parser("cache", parents=[which])
    c.add_argument("--n", type=int, default=4000)
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--out", help="default: the variant's cache folder")
    m = sub.add_parser("masks", parents=[which], help="training-only targets of a cache (object coverage and shape per token)")
    m.add_argument("--out", help="the cache folder")
    m.add_argument("--seed", type=int, default=1, help="the cache's --seed")
    m.add_argument("--n", type=int, default=None)
    t = sub.add_parser("train", parents=[which])
    t.add_argument("--cache")
    t.add_argument("--dir", help="curve.jsonl, ckpt.pt and best.pt go here (default out/NAME)")
    t.add_argument("--n", type=int, default=None, help="train on the first N cached clips only")
    t.add_argument("--resume", action="store_true", help="continue from DIR/ckpt.pt (same settings, same schedule)")
    t.add_argument("--init", help="start from these trained weights (a committed .pt, best.pt) with a new schedule")
    t.add_argument("--steps", type=int, help="length of the cosine schedule; training stops there (0: use --minutes)")
    t.add_argument("--minutes", type=float, help="with --steps: also stop after this many minutes (0: no limit); "
                   "with --steps 0: the schedule's length in minutes of training")
    t.add_argument("--batch", type=int)
    t.add_argument("--lr", type=float, help="heads; the projector and image_newline get lr x --proj-lr-mult (v2: 1e-3 "
                   "blew the projector's output norm up 10x in 50 steps of batch 4)")
    t.add_argument("--proj-lr-mult", type=float)
    t.add_argument("--lm-lr", "--lora-lr", type=float, dest="lm_lr", help="v1: the decoder (default --lr); v2: LoRA")
    t.add_argument("--lora", type=int, help="v2: LoRA rank on the LM (0: the LM stays frozen)")
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--warmup", type=int, help="steps of linear warm-up")
    t.add_argument("--held", type=int, help="the first HELD cached clips are held out")
    t.add_argument("--eval-every", type=int)
    t.add_argument("--ckpt-every", type=int, default=25)
    t.add_argument("--log-every", type=int)
    t.add_argument("--ce", choices=("letters", "vocab"), help="the answer's cross-entropy over the 4 letters or the vocabulary")
    t.add_argument("--probe-minutes", type=float, default=0, help="pre-train the projector with a probe first")
    t.add_argument("--aux", type=float, default=0.0, help="weight of the object-coverage heads' loss (needs masks)")
    t.add_argument("--shape-aux", type=float, help="weight of the heads' shape loss (needs masks; v2: --aux)")
    t.add_argument("--shape-min", type=float, help="coverage from which a token names its shape")
    t.add_argument("--aux-layer", type=int, help="also put the heads on this LM layer's video states (0: none)")
    t.add_argument("--attn-sup", type=float, default=0.0,
                   help="weight of the loss keeping the answer's and the object's attention off background tokens")
    t.add_argument("--caption", type=float, default=0.0, help="v2: weight of the caption loss: the reply is the letter "
                   "then a caption of the clip (data.describe; needs masks), every caption token supervised")
    t.add_argument("--stock-share", type=float, default=1.0,
                   help="share of batches in the stock layout; the rest get mixed per-frame grids")
    t.add_argument("--attn-dropout", type=float, default=0.0, help="LM attention dropout while training")
    t.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    if args.cmd == "train":
        from .loop import SAVED, train

        if args.resume:  # the run's own settings (loop.SAVED always; the rest unless given again)
            args.dir = args.dir or variants.get(args.testbed).train["dir"]
            if (Path(args.dir) / "ckpt.pt").is_file():
                saved = torch.load(Path(args.dir) / "ckpt.pt", weights_only=False, map_location="cpu")["args"]
                for k, x in saved.items():
                    if k in SAVED or getattr(args, k, None) is None:
                        setattr(args, k, x)

        train(_defaults(args))
    else:
        {"cache": cache, "masks": masks}[args.cmd](args)


if __name__ == "__main__":
    main()
