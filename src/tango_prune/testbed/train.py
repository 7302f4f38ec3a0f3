"""Train the testbed Video LLM (tango_prune.testbed.model) on this CPU.

    python -m tango_prune.testbed.train cache --n 4000 --seed 1 --out out/testbed_cache   # frozen tower, once (~0.4 s/clip)
    python -m tango_prune.testbed.train train --cache out/testbed_cache --minutes 60 --log out/train.log

Stage 1 runs the real tower (bf16) on generated clips and stores hidden_states[-1] without CLS, (16, 256, 384) fp16
per clip, in one memmap. Stage 2 trains the projector, newline and decoder on those features through the class's own
modules (projector -> apply_pooling -> newline -> decoder), full tokens only, loss on the answer letter.
Held-out clips use other seeds (training uses seed 1; `tango-prune eval` defaults to seed 0).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tango_prune.testbed import model as tb
from tango_prune.testbed import data as td
from tango_prune.hardware import default_dtype
from tango_prune.testbed.losses import OBJECT, AttentionTap, aux_loss, background_attention_loss

SHAPE = (td.FRAMES, 256, 384)
FAST_BF16 = default_dtype() == torch.bfloat16  # autocast only where bf16 is native: emulated, it is ~10x slower


def cache(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = tb.build()
    dtype = default_dtype()  # bf16 where the CPU has it natively (the committed cache), else fp32 (~10x faster there)
    tower = model.model.vision_tower.to(dtype).eval()
    tower.config._attn_implementation = "eager"  # measured here: 0.63 s per clip vs 0.94 s with sdpa (bf16, 2 cores)
    meta_file = out / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else []  # resume where a stopped run ended
    feats = np.lib.format.open_memmap(out / "feats.npy", mode="r+" if meta else "w+", dtype=np.float16,
                                      shape=(args.n, *SHAPE))
    if feats.shape[0] != args.n:
        raise SystemExit(f"{out} holds a cache for {feats.shape[0]} clips; pass --n {feats.shape[0]} or a new --out")
    bg = td.Backgrounds(None)
    t0 = time.time()
    for i in range(len(meta), args.n):
        rng = np.random.default_rng([args.seed, i])
        s = td.make_sample(rng, bg, td.TYPES[i % len(td.TYPES)])
        with torch.no_grad():
            hs = tower(tb.pixel_values(s.frames)[0].to(dtype), output_hidden_states=True).hidden_states[-1]
        feats[i] = hs[:, 1:].float().numpy().astype(np.float16)
        meta.append({"question": s.question, "options": s.options, "answer": s.answer, "qtype": s.qtype})
        if (i + 1) % 50 == 0 or i + 1 == args.n:
            feats.flush()
            (out / "meta.json").write_text(json.dumps(meta))
            print(f"{i + 1}/{args.n} clips, {time.time() - t0:.0f} s", flush=True)


def masks(args) -> None:
    """Per cached clip: each pooled token's object coverage (masks.npy) and each frame's shape (shapes.npy, -1: none),
    for the auxiliary losses; resumes where the files end."""
    out = Path(args.out)
    meta = json.loads((out / "meta.json").read_text())
    n = len(meta) if args.n is None else args.n
    path, spath = out / "masks.npy", out / "shapes.npy"
    done = np.load(path) if path.is_file() else np.zeros((0, td.FRAMES, 64), np.float16)
    sdone = np.load(spath) if spath.is_file() else np.zeros((0, td.FRAMES), np.int8)
    start = min(len(done), len(sdone))
    bg = td.Backgrounds(None)
    rows = [td.object_labels([args.seed, i], bg, meta[i]["qtype"]) for i in range(start, n)]
    np.save(path, np.concatenate([done[:start], np.asarray([r[0] for r in rows], np.float16).reshape(-1, td.FRAMES, 64)]))
    np.save(spath, np.concatenate([sdone[:start], np.asarray([r[1] for r in rows], np.int8).reshape(-1, td.FRAMES)]))
    print(f"masks and shapes for {n} clips", flush=True)


GRIDS = (8, 6, 4, 3, 2)  # tokens per frame side in the mixed layouts; 8 is the class's own pooling
GRID_P = (0.3, 0.15, 0.25, 0.15, 0.15)


def mixed_grids(rng, batch: int) -> np.ndarray:
    """(batch, 16) tokens-per-side for each frame, drawn independently of the content: every frame stays whole,
    only its resolution changes (as in LLaVA-Video's slow-fast frames or AnyRes), so this is still full-token data.
    Why: trained on the one 1025-token layout only, the decoder read frame and position off the 1-D index and fell
    to chance whenever tokens were removed and the rest renumbered (tango_prune.testbed.layout_probe)."""
    return rng.choice(GRIDS, size=(batch, td.FRAMES), p=GRID_P)


def pool_frames(model, feats: torch.Tensor, grids: np.ndarray | None) -> list[torch.Tensor]:
    """Per clip, the projected video tokens frame by frame: the stock 2x2 bilinear pooling (8 x 8) when grids is
    None, else each frame average-pooled to its own g x g (8 x 8 average pooling equals the stock bilinear one)."""
    inner = model.model
    B = feats.shape[0]
    proj = inner.multi_modal_projector(feats.flatten(0, 1))  # (B*16, 256, D)
    D = proj.shape[-1]
    if grids is None:
        return list(inner.apply_pooling(proj).reshape(B, -1, D))
    grid = proj.reshape(B * td.FRAMES, 16, 16, D).permute(0, 3, 1, 2)
    pooled = {g: torch.nn.functional.adaptive_avg_pool2d(grid, g).flatten(2).transpose(1, 2).reshape(B, td.FRAMES, -1, D)
              for g in np.unique(grids).tolist()}
    return [torch.cat([pooled[int(g)][b, t] for t, g in enumerate(grids[b])]) for b in range(B)]


def pool_targets(fracs: np.ndarray, grids: np.ndarray | None) -> torch.Tensor:
    """One clip's object-coverage targets (16, 64) laid out like pool_frames' tokens."""
    f = torch.from_numpy(fracs.astype(np.float32))
    if grids is None:
        return f.reshape(-1)
    m = f.reshape(td.FRAMES, 1, 8, 8)
    return torch.cat([torch.nn.functional.adaptive_avg_pool2d(m[t], int(g)).reshape(-1) for t, g in enumerate(grids)])


def batch_embeds(model, videos: list[torch.Tensor], metas: list[dict]):
    """Inputs embeddings exactly as the stock forward builds them, for a batch of clips' video tokens (pool_frames),
    left padded, with position ids that skip the padding. Returns (embeds, mask, position_ids, is_video) where
    is_video marks the video tokens (not the newline)."""
    inner = model.model
    newline = inner.image_newline
    rows = []
    for v, m in zip(videos, metas):
        ids = tb.input_ids((m["question"], m["options"]), video_tokens=len(v) + 1)[0]
        e = inner.get_input_embeddings()(ids)
        at = ids == tb.VOCAB["<video>"]
        e = e.masked_scatter(at[:, None], torch.cat([v, newline[None].to(v)]).to(e.dtype))
        rows.append((e, at & (at.cumsum(0) <= len(v))))
    n = max(len(e) for e, _ in rows)
    pad = [n - len(e) for e, _ in rows]
    emb = torch.stack([torch.cat([inner.get_input_embeddings()(torch.full((p,), tb.VOCAB["<pad>"])), e])
                       for p, (e, _) in zip(pad, rows)])
    mask = torch.stack([torch.cat([torch.zeros(p, dtype=torch.long), torch.ones(n - p, dtype=torch.long)]) for p in pad])
    is_video = torch.stack([torch.cat([torch.zeros(p, dtype=torch.bool), v]) for p, (_, v) in zip(pad, rows)])
    return emb, mask, (mask.cumsum(-1) - 1).clamp_min(0), is_video


class Probe(torch.nn.Module):
    """A throw-away reader for pre-training the projector: per-type learned queries attend over the pooled video
    tokens (plus learned frame/position embeddings), an MLP gives the 4 option logits. Only the projector is kept."""

    def __init__(self, d: int, tokens: int = td.FRAMES * 64, queries: int = 4) -> None:
        super().__init__()
        self.pos = torch.nn.Parameter(torch.randn(tokens, d) * 0.02)
        self.q = torch.nn.Parameter(torch.randn(len(td.TYPES), queries, d) * 0.02)
        self.attn = torch.nn.MultiheadAttention(d, 4, batch_first=True)
        self.head = torch.nn.Sequential(torch.nn.LayerNorm(queries * d), torch.nn.Linear(queries * d, 256),
                                        torch.nn.GELU(), torch.nn.Linear(256, 4))

    def forward(self, video: torch.Tensor, qtype: torch.Tensor) -> torch.Tensor:
        kv = video + self.pos
        o, _ = self.attn(self.q[qtype], kv, kv, need_weights=False)
        return self.head(o.flatten(1))


@torch.no_grad()
def whiten_projector(model, feats, idx) -> None:
    """Fold per-channel standardisation of the tower's features into the projector's first linear layer (an
    initialisation; the class is unchanged). DINOv2's last hidden state (before its final norm) has two channels
    with means of ~20 against a median channel std of 1.3: unwhitened, every projected token looks alike at init
    and training sat at chance (measured: 250 decoder steps, 500 probe steps, held-out 0.245)."""
    x = torch.from_numpy(np.stack([feats[i] for i in idx]).astype(np.float32)).reshape(-1, feats.shape[-1])
    mu, sigma = x.mean(0), x.std(0).clamp_min(1e-3)
    lin = model.model.multi_modal_projector.linear_1
    w = lin.weight / sigma  # W (x - mu) / sigma + b  ==  (W / sigma) x + (b - (W / sigma) mu)
    lin.bias -= w @ mu
    lin.weight.copy_(w)


def pretrain_projector(model, feats, meta, train_idx, val_idx, minutes: float, batch: int, log, rng, aux_proj,
                       fracs, aux_w: float) -> None:
    inner = model.model
    probe = Probe(inner.multi_modal_projector.linear_2.out_features)
    opt = torch.optim.AdamW([{"params": inner.multi_modal_projector.parameters(), "lr": 1e-3},
                             {"params": [*probe.parameters(), *aux_proj.parameters()], "lr": 1e-3}], weight_decay=0.01)

    def logits(idx):
        f = torch.from_numpy(np.stack([feats[i] for i in idx]).astype(np.float32))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=FAST_BF16):
            v = torch.stack(pool_frames(model, f, None))
            return probe(v, torch.tensor([td.TYPES.index(meta[i]["qtype"]) for i in idx])).float(), aux_proj(v).float()

    t0, step = time.time(), 0
    while time.time() - t0 < minutes * 60:
        idx = rng.choice(train_idx, size=batch, replace=False)
        out, dense = logits(idx)
        loss = torch.nn.functional.cross_entropy(out, torch.tensor([meta[i]["answer"] for i in idx]))
        if aux_w:
            loss = loss + aux_w * aux_loss(dense, torch.from_numpy(np.stack([fracs[i] for i in idx]).astype(np.float32)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            with torch.no_grad():
                pred = torch.cat([logits(val_idx[s : s + 32])[0].argmax(-1) for s in range(0, len(val_idx), 32)])
            acc = float((pred == torch.tensor([meta[i]["answer"] for i in val_idx])).float().mean())
            print(f"PROBE step {step} {time.time() - t0:.0f}s loss {loss.item():.3f} held-out acc {acc:.3f}", file=log, flush=True)


def train(args) -> None:
    torch.manual_seed(args.seed)
    root = Path(args.cache)
    meta = json.loads((root / "meta.json").read_text())
    feats = np.load(root / "feats.npy", mmap_mode="r")
    n = len(meta) if args.n is None else min(args.n, len(meta))
    fracs = np.load(root / "masks.npy") if args.aux or args.attn_sup or args.shape_aux else None
    shapes = np.load(root / "shapes.npy") if args.shape_aux else None
    if fracs is not None:
        n = min(n, len(fracs))
    held = args.held
    if n <= held + args.batch:
        raise SystemExit(f"only {n} cached clips; need more than --held {held} + a batch")
    train_idx, val_idx = np.arange(held, n), np.arange(held)
    model = tb.build(seed=args.seed)
    for layer in model.model.language_model.layers:
        # Attention dropout (training only), so that no answer hangs on a few particular keys (an experiment for
        # robustness to removed tokens; it did not help within the budget, see the data card).
        layer.self_attn.attention_dropout = args.attn_dropout
    model.train()
    model.model.vision_tower.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    proj = [p for n_, p in model.named_parameters() if "multi_modal_projector" in n_ or "image_newline" in n_]
    rest = [p for p in params if all(p is not q for q in proj)]
    width = model.config.text_config.hidden_size
    aux_proj, aux_dec = torch.nn.Linear(width, 1), torch.nn.Linear(width, 1)
    shape_proj, shape_dec = torch.nn.Linear(width, len(td.SHAPES)), torch.nn.Linear(width, len(td.SHAPES))
    tap = AttentionTap(model.model.language_model) if args.attn_sup else None
    opt = torch.optim.AdamW([{"params": proj, "lr": args.lr * args.proj_lr_mult},
                             {"params": [*rest, *aux_proj.parameters(), *aux_dec.parameters(), *shape_proj.parameters(),
                                         *shape_dec.parameters()], "lr": args.lr}],
                            weight_decay=0.01, betas=(0.9, 0.98))
    letters = tb.letter_ids()
    log = open(args.log, "a") if args.log else sys.stdout
    print(f"params (trained) {tb.n_params(model) / 1e6:.2f} M; clips train {len(train_idx)} held-out {len(val_idx)}",
          file=log, flush=True)
    rng = np.random.default_rng(args.seed)
    if args.init:  # continue from saved weights with a fresh schedule (the optimiser state is not saved)
        state = torch.load(args.init, weights_only=True)
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
        print(f"continuing from {args.init}", file=log, flush=True)
    else:
        whiten_projector(model, feats, train_idx[:64])
    if args.probe_minutes and not args.init:
        pretrain_projector(model, feats, meta, train_idx, val_idx, args.probe_minutes, 16, log, rng, aux_proj, fracs, args.aux)
    t0, step = time.time(), 0
    total = args.minutes * 60
    best = -1.0

    def lr_at(frac):
        warm = 0.03
        return frac / warm if frac < warm else 0.5 * (1 + math.cos(math.pi * min(1.0, (frac - warm) / (1 - warm))))

    def run(idx, grids=None, keep=None):
        f = torch.from_numpy(np.stack([feats[i] for i in idx]).astype(np.float32))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=FAST_BF16):
            videos = pool_frames(model, f, grids)
            if keep is not None:  # evaluation only: a random share of the tokens, positions compacted
                g = torch.Generator().manual_seed(int(idx[0]))
                videos = [v[torch.randperm(len(v), generator=g)[: max(1, round(keep * len(v)))].sort().values]
                          for v in videos]
            emb, mask, pos, is_video = batch_embeds(model, videos, [meta[i] for i in idx])
            supervise = keep is None and model.training
            if tap is not None:
                tap.inputs.clear()
            out = model.model.language_model(inputs_embeds=emb, attention_mask=mask, position_ids=pos,
                                             output_hidden_states=bool(args.aux or args.shape_aux))
            logits = model.lm_head(out.last_hidden_state[:, -1])
            extra = {}
            if fracs is not None and supervise:
                target = torch.cat([pool_targets(fracs[i], None if grids is None else grids[k]) for k, i in enumerate(idx)])
                video = torch.cat(videos)
                if args.aux:
                    extra["aux"] = aux_loss(aux_proj(video).float(), target) + aux_loss(
                        aux_dec(out.hidden_states[2][is_video]).float(), target)
                if args.attn_sup:
                    obj = torch.zeros_like(is_video)
                    obj[is_video] = target >= OBJECT
                    extra["attn"] = background_attention_loss(tap, is_video, obj, mask)
                if args.shape_aux and grids is None:  # each well-covered token names the shape on it
                    per_frame = torch.from_numpy(np.stack([shapes[i] for i in idx]).astype(np.int64))  # (B, 16)
                    label = per_frame[:, :, None].expand(-1, -1, 64).reshape(-1)
                    label = torch.where(target >= 0.25, label, torch.full_like(label, -100))
                    if (label >= 0).any():
                        ce = torch.nn.functional.cross_entropy
                        extra["shape"] = ce(shape_proj(video).float(), label) + ce(
                            shape_dec(out.hidden_states[2][is_video]).float(), label)
        return logits.float()[:, letters], extra

    def evaluate(keep=None, mixed=False):
        model.eval()
        correct, by = 0, {}
        layouts = np.random.default_rng(0)  # the same mixed layouts at every evaluation
        with torch.no_grad():
            for s in range(0, len(val_idx), args.batch):
                idx = val_idx[s : s + args.batch]
                pred = run(idx, mixed_grids(layouts, len(idx)) if mixed else None, keep=keep)[0].argmax(-1)
                for i, p in zip(idx, pred.tolist()):
                    ok = int(p == meta[i]["answer"])
                    correct += ok
                    by.setdefault(meta[i]["qtype"], []).append(ok)
        model.train()
        model.model.vision_tower.eval()
        return correct / len(val_idx), {k: round(sum(v) / len(v), 3) for k, v in by.items()}

    if args.init:  # where the continued weights start, on this machine's features
        acc, by = evaluate()
        print(f"EVAL step 0 held-out acc {acc:.3f} {by}", file=log, flush=True)
    while time.time() - t0 < total:
        frac = (time.time() - t0) / total
        for g, base in zip(opt.param_groups, (args.lr * args.proj_lr_mult, args.lr)):
            g["lr"] = base * lr_at(frac)
        idx = rng.choice(train_idx, size=args.batch, replace=False)
        mixed = rng.random() >= args.stock_share  # one layout kind per batch: mixed rows pad to each other, not to 1054
        logits, extra = run(idx, mixed_grids(rng, args.batch) if mixed else None)
        target = torch.tensor([meta[i]["answer"] for i in idx])
        answer_loss = torch.nn.functional.cross_entropy(logits, target)
        weights = {"aux": args.aux, "attn": args.attn_sup, "shape": args.shape_aux}
        loss = answer_loss + sum(weights[k] * v for k, v in extra.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % 25 == 0:
            if args.n is None and fracs is None:  # the cache may still be growing: train on every clip it holds by now
                meta = json.loads((root / "meta.json").read_text())
                train_idx = np.arange(held, len(meta))
            parts = " ".join(f"{k} {v.item():.3f}" for k, v in extra.items())
            print(f"step {step} {time.time() - t0:.0f}s loss {loss.item():.3f} answer {answer_loss.item():.3f} {parts}",
                  file=log, flush=True)
        if step % args.eval_every == 0:
            acc, by = evaluate()
            print(f"EVAL step {step} {time.time() - t0:.0f}s held-out acc {acc:.3f} {by} (train clips {len(train_idx)})",
                  file=log, flush=True)
            if args.stock_share < 1 or args.attn_dropout:
                print(f"EVAL step {step} mixed layouts {evaluate(mixed=True)}; random 30% of the tokens, positions "
                      f"compacted {evaluate(0.3)}", file=log, flush=True)
            if acc >= best:
                best = acc
                torch.save(tb.trained_state(model), args.out)
    acc, by = evaluate()
    print(f"FINAL step {step} {time.time() - t0:.0f}s held-out acc {acc:.3f} {by}", file=log, flush=True)
    if acc >= best:
        torch.save(tb.trained_state(model), args.out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache")
    c.add_argument("--n", type=int, default=4000)
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--out", default="out/testbed_cache")
    m = sub.add_parser("masks", help="per-token object coverage of cached clips (auxiliary targets)")
    m.add_argument("--out", default="out/testbed_cache")
    m.add_argument("--seed", type=int, default=1)
    m.add_argument("--n", type=int, default=None)
    t = sub.add_parser("train")
    t.add_argument("--cache", default="out/testbed_cache")
    t.add_argument("--n", type=int, default=None)
    t.add_argument("--held", type=int, default=200, help="the first HELD cached clips are held out")
    t.add_argument("--minutes", type=float, default=60)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--proj-lr-mult", type=float, default=3.0)
    t.add_argument("--eval-every", type=int, default=200)
    t.add_argument("--probe-minutes", type=float, default=0, help="pre-train the projector with a probe first")
    t.add_argument("--aux", type=float, default=0.0, help="weight of the dense object-coverage loss (needs masks)")
    t.add_argument("--stock-share", type=float, default=1.0,
                   help="share of batches in the stock 16 x 8 x 8 layout; the rest get mixed per-frame grids")
    t.add_argument("--attn-dropout", type=float, default=0.0, help="decoder attention dropout while training")
    t.add_argument("--attn-sup", type=float, default=0.0,
                   help="weight of the loss keeping the answer's and the object's attention off background tokens")
    t.add_argument("--shape-aux", type=float, default=0.0, help="weight of the per-token shape loss (needs shapes.npy)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--init", help="weights to continue from (a file this command wrote)")
    t.add_argument("--log", default=None)
    t.add_argument("--out", default=str(tb.WEIGHTS))
    args = ap.parse_args()
    torch.set_num_threads(2)
    {"cache": cache, "masks": masks, "train": train}[args.cmd](args)


if __name__ == "__main__":
    main()
