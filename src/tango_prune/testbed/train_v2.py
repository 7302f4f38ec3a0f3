"""Train testbed v2 (tango_prune.testbed.v2) on this CPU: the frozen tower's features are cached once, then the
projector, image_newline and LoRA factors of the frozen SmolLM2 are trained on full tokens only (pruning stays
training-free), on clips of 8-16 frames with several phrasings per question type (testbed.data_v2).

    python -m tango_prune.testbed.train_v2 cache --n 4000 --out out/testbed_v2/cache       # ~1 s per clip here
    python -m tango_prune.testbed.train_v2 train --cache out/testbed_v2/cache --dir out/testbed_v2 --steps 6000
    python -m tango_prune.testbed.train_v2 train --dir out/testbed_v2 --resume             # continue a stopped run

``train`` writes DIR/curve.jsonl (step, loss, held-out accuracy per type), DIR/ckpt.pt (everything needed to resume:
trained weights, optimiser, step, RNG; every --ckpt-every steps and at each evaluation) and DIR/best.pt (the
weights of the best held-out evaluation, loadable with ``v2.load_testbed(DIR/best.pt)``). The learning rate follows a
cosine over --steps, so a resumed run continues the same schedule. Held-out: the first --held cached clips.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from tango_prune.hardware import default_dtype
from tango_prune.testbed import data as td
from tango_prune.testbed import data_v2
from tango_prune.testbed import v2
from tango_prune.testbed.losses import OBJECT, aux_loss

PATCHES = (v2.IMAGE // v2.PATCH) ** 2  # 64 ViT patches per frame at 112 px
FAST_BF16 = default_dtype() == torch.bfloat16  # bf16 only where it is native: emulated, it is ~10x slower


def cache(args) -> None:
    """The tower's hidden_states[-1] without CLS, (T, 64, 384) fp16 per clip, in one memmap padded to 16 frames;
    meta.json holds each clip's question, options, answer, type and frame count. Resumes where a stopped run ended."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from transformers import Dinov2Model

    dtype = default_dtype()
    tower = Dinov2Model(v2.config().vision_config)
    tower.load_state_dict(v2.tower_state(), strict=False)
    tower = tower.to(dtype).eval()
    tower.config._attn_implementation = "eager"
    meta_file = out / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else []
    feats = np.lib.format.open_memmap(out / "feats.npy", mode="r+" if meta else "w+", dtype=np.float16,
                                      shape=(args.n, data_v2.MAX_FRAMES, PATCHES, 384))
    if feats.shape[0] != args.n:
        raise SystemExit(f"{out} holds a cache for {feats.shape[0]} clips; pass --n {feats.shape[0]} or a new --out")
    bg = td.Backgrounds(None)
    t0 = time.time()
    for i in range(len(meta), args.n):
        s = data_v2.draw(args.seed, i, bg)
        with torch.no_grad():
            hs = tower(v2.pixel_values(s.frames)[0].to(dtype), output_hidden_states=True).hidden_states[-1]
        feats[i, : len(hs)] = hs[:, 1:].float().numpy().astype(np.float16)
        meta.append({"question": s.question, "options": s.options, "answer": s.answer, "qtype": s.qtype,
                     "frames": int(s.frames.shape[0])})
        if (i + 1) % 50 == 0 or i + 1 == args.n:
            feats.flush()
            meta_file.write_text(json.dumps(meta))
            print(f"{i + 1}/{args.n} clips, {time.time() - t0:.0f} s", flush=True)


def masks(args) -> None:
    """Per cached clip the auxiliary targets, padded to 16 frames: each pooled token's object coverage (masks.npy,
    (n, 16, 16) fp16) and each frame's shape (shapes.npy, (n, 16) int8, -1: none). ~0.14 s per clip."""
    root = Path(args.out)
    meta = json.loads((root / "meta.json").read_text())
    n = len(meta)
    fr = np.zeros((n, data_v2.MAX_FRAMES, v2.GRID * v2.GRID), np.float16)
    sh = np.full((n, data_v2.MAX_FRAMES), -1, np.int8)
    bg = td.Backgrounds(None)
    for i in range(n):
        f, s = data_v2.object_labels(args.seed, i, bg, grid=v2.GRID)
        if len(f) != meta[i]["frames"]:
            raise SystemExit(f"clip {i}: {len(f)} frames regenerated, {meta[i]['frames']} cached; pass the cache's --seed")
        fr[i, : len(f)], sh[i, : len(s)] = f, s
    np.save(root / "masks.npy", fr)
    np.save(root / "shapes.npy", sh)
    print(f"masks and shapes for {n} clips", flush=True)


class AuxHeads(torch.nn.Module):
    """Training-only heads on the projected, pooled video tokens (nothing of them is committed): each token predicts
    how much of its cell the object covers (v1's aux_loss), and, where it covers at least v1's OBJECT share, which
    shape it is. They make the projector carry what the questions ask about before the LM has learnt to read it."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.cover = torch.nn.Linear(width, 1)
        self.shape = torch.nn.Linear(width, len(td.SHAPES))

    def loss(self, video: list[torch.Tensor], cover: list[torch.Tensor], shapes: list[torch.Tensor]) -> torch.Tensor:
        v = torch.cat(video).float()  # (N, D) every clip's frame tokens, newline excluded
        c = torch.cat(cover).float()
        s = torch.cat(shapes).long()
        out = aux_loss(self.cover(v), c)
        on = c >= OBJECT
        if on.any():
            out = out + torch.nn.functional.cross_entropy(self.shape(v[on]), s[on])
        return out


@torch.no_grad()
def whiten_projector(model, feats: np.ndarray) -> None:
    """Fold per-channel standardisation of the tower's features into the projector's first layer (v1's
    initialisation: DINOv2's last hidden state has two channels with means ~20 against a median std of 1.3)."""
    x = torch.from_numpy(feats.astype(np.float32)).reshape(-1, feats.shape[-1])
    mu, sigma = x.mean(0), x.std(0).clamp_min(1e-3)
    lin = model.model.multi_modal_projector.linear_1
    w = lin.weight / sigma
    lin.bias -= w @ mu
    lin.weight.copy_(w)


def batch_embeds(model, feats: list[torch.Tensor], metas: list[dict], tok, keep: list | None = None,
                 replies: list[list[int]] | None = None):
    """Inputs embeddings as the stock forward builds them (projector -> apply_pooling -> frames in order -> newline),
    for clips of different lengths, left padded; position ids skip the padding. Returns (embeds, mask, positions);
    ``keep``, a list, receives each clip's (T*16, D) video tokens for the auxiliary heads; ``replies`` (token ids
    per clip) are appended after each prompt (teacher forcing), so that a clip's prompt ends len(reply) before the
    row's end."""
    inner = model.model
    embed = inner.get_input_embeddings()
    vid = model.config.video_token_id
    rows = []
    for f, m in zip(feats, metas):
        video = inner.apply_pooling(inner.multi_modal_projector(f)).flatten(0, 1)  # (T*16, D)
        if keep is not None:
            keep.append(video)
        video = torch.cat([video, inner.image_newline[None].to(video)])
        ids = v2.input_ids((m["question"], m["options"]), frames=m["frames"], tok=tok)[0]
        if replies is not None:
            ids = torch.cat([ids, torch.tensor(replies[len(rows)], dtype=ids.dtype)])
        e = embed(ids)
        rows.append(e.masked_scatter((ids == vid)[:, None], video.to(e.dtype)))
    n = max(len(e) for e in rows)
    pad = embed(torch.tensor([tok.pad_token_id]))[0]
    emb = torch.stack([torch.cat([pad.expand(n - len(e), -1), e]) for e in rows])
    mask = torch.stack([torch.cat([torch.zeros(n - len(e), dtype=torch.long), torch.ones(len(e), dtype=torch.long)])
                        for e in rows])
    return emb, mask, (mask.cumsum(-1) - 1).clamp_min(0)


def reply_ids(meta: dict, cover: np.ndarray, shapes: np.ndarray, tok) -> list[int]:
    """The assistant's reply used with --caption: the answer's letter, a newline, data_v2.describe's caption of the
    clip and <|im_end|>. The letter comes first, so what eval reads (the first token) is unchanged."""
    colour = next(c for c in td.COLOURS if c in meta["question"].lower().replace("?", " ").replace(".", " ").split())
    text = "\n" + data_v2.describe(cover, shapes, colour) + "<|im_end|>"
    return [tok.convert_tokens_to_ids(v2.LETTERS[meta["answer"]])] + tok(text, add_special_tokens=False).input_ids


def lr_at(step: int, total: int, warm: int) -> float:
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


def train(args) -> None:
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_file = out / "ckpt.pt"
    ckpt = torch.load(ckpt_file, weights_only=False) if args.resume else None
    if args.resume and ckpt is None:
        raise SystemExit(f"--resume: no checkpoint at {ckpt_file}")
    if ckpt is not None:  # the run's own settings, except what the command line changes on purpose
        saved = ckpt["args"]
        for k in ("cache", "lora", "held", "batch", "lr", "lora_lr", "aux", "caption"):
            setattr(args, k, saved.get(k, getattr(args, k)))
    root = Path(args.cache)
    meta = json.loads((root / "meta.json").read_text())
    feats = np.load(root / "feats.npy", mmap_mode="r")
    n = len(meta)
    if n <= args.held + args.batch:
        raise SystemExit(f"only {n} cached clips; need more than --held {args.held} + a batch")
    train_idx, val_idx = np.arange(args.held, n), np.arange(args.held)
    torch.manual_seed(args.seed)
    model = v2.build(seed=args.seed)
    lm = model.model.language_model
    if FAST_BF16:
        lm.to(torch.bfloat16)  # frozen: its weights need no fp32 master copy
    lora = v2.LoRA(lm, rank=args.lora).attach() if args.lora else None
    model.train()
    proj = [p for n_, p in model.named_parameters() if "multi_modal_projector" in n_ or "image_newline" in n_]
    aux = AuxHeads(model.config.text_config.hidden_size) if args.aux else None
    groups = [{"params": proj + ([] if aux is None else list(aux.parameters())), "lr": args.lr}]
    if args.aux or args.caption:
        if not (root / "masks.npy").is_file():
            raise SystemExit(f"--aux/--caption need {root}/masks.npy: run `python -m tango_prune.testbed.train_v2 masks "
                             f"--out {root}`")
        cover_all, shapes_all = np.load(root / "masks.npy"), np.load(root / "shapes.npy")
        if len(cover_all) < n:
            raise SystemExit(f"{root}/masks.npy covers {len(cover_all)} of {n} clips; run `train_v2 masks` again")
    if lora is not None:
        groups.append({"params": list(lora.parameters()), "lr": args.lora_lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.0, betas=(0.9, 0.98))
    tok = v2.tokenizer()
    letters = v2.letter_ids(tok)
    rng = np.random.default_rng(args.seed)
    step, elapsed, best = 0, 0.0, -1.0
    if ckpt is not None:
        lo = v2.load_state(model, ckpt["trained"])
        if lora is not None:
            lora.load_state_dict(lo.state_dict())
        if aux is not None:
            aux.load_state_dict(ckpt["aux"])
        opt.load_state_dict(ckpt["opt"])
        step, elapsed, best = ckpt["step"], ckpt["elapsed"], ckpt["best"]
        rng.bit_generator.state = ckpt["rng"]
    elif args.init:  # trained weights (e.g. the committed testbed_v2.pt): a new schedule and fresh Adam moments
        state = torch.load(args.init, weights_only=True)
        lo = v2.load_state(model, state.get("trained", state))
        if (lo is None) != (lora is None) or (lo is not None and lo.rank != lora.rank):
            raise SystemExit(f"--init {args.init}: LoRA rank {0 if lo is None else lo.rank}, this run's --lora {args.lora}")
        if lora is not None:
            lora.load_state_dict(lo.state_dict())
    else:
        whiten_projector(model, np.concatenate([feats[i, : meta[i]["frames"]] for i in train_idx[:32]]))
    log = open(out / "curve.jsonl", "a")
    params = [p for g in groups for p in g["params"]]
    start = f"resuming at step {step}" if ckpt else f"from {args.init}" if args.init else "from scratch"
    print(f"trained params {v2.n_trained(model, lora) / 1e6:.2f} M; clips train {len(train_idx)} held-out "
          f"{len(val_idx)}; {start}", flush=True)

    def run(idx, keep=None, caption=False):
        """The letter logits (B, vocab) after each prompt; with caption, also the mean cross-entropy of the caption
        tokens that follow the letter (teacher forced)."""
        f = [torch.from_numpy(feats[i, : meta[i]["frames"]].astype(np.float32)) for i in idx]
        replies = None
        if caption:
            replies = [reply_ids(meta[i], cover_all[i, : meta[i]["frames"]].astype(np.float32),
                                 shapes_all[i, : meta[i]["frames"]], tok) for i in idx]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=FAST_BF16):
            emb, mask, pos = batch_embeds(model, f, [meta[i] for i in idx], tok, keep, replies)
            h = lm(inputs_embeds=emb, attention_mask=mask, position_ids=pos).last_hidden_state
            n = h.shape[1]
            if not caption:
                return model.lm_head(h[:, -1]).float(), None
            # row b's reply r occupies the last len(r) positions; position p predicts token p + 1
            at = torch.tensor([n - len(r) - 1 for r in replies])
            letter = model.lm_head(h[torch.arange(len(idx)), at]).float()
            rows = torch.cat([torch.full((len(r) - 1,), b) for b, r in enumerate(replies)])
            cols = torch.cat([torch.arange(n - len(r), n - 1) for r in replies])
            target = torch.cat([torch.tensor(r[1:]) for r in replies])
            cap = torch.nn.functional.cross_entropy(model.lm_head(h[rows, cols]).float(), target)
            return letter, cap

    def evaluate():
        model.eval()
        by = {}
        with torch.no_grad():
            for s in range(0, len(val_idx), args.batch):
                idx = val_idx[s : s + args.batch]
                pred = run(idx)[0][:, letters].argmax(-1)
                for i, p in zip(idx, pred.tolist()):
                    by.setdefault(meta[i]["qtype"], []).append(int(p == meta[i]["answer"]))
        model.train()
        acc = sum(sum(v) for v in by.values()) / len(val_idx)
        return acc, {t: round(sum(by[t]) / len(by[t]), 3) for t in td.TYPES if t in by}

    def save(best_too: bool) -> None:
        state = v2.trained_state(model, lora)
        tmp = out / "ckpt.pt.tmp"
        torch.save({"trained": state, "aux": None if aux is None else aux.state_dict(), "opt": opt.state_dict(),
                    "step": step, "elapsed": elapsed, "best": best, "rng": rng.bit_generator.state, "args": vars(args)}, tmp)
        tmp.replace(ckpt_file)
        if best_too:
            torch.save(state, out / "best.pt")

    t_last, losses, rec_aux, rec_cap = time.time(), [], [], []
    stop_at = time.time() + args.minutes * 60 if args.minutes else float("inf")
    while step < args.steps and time.time() < stop_at:
        for g, base in zip(opt.param_groups, (args.lr, args.lora_lr)):
            g["lr"] = base * lr_at(step, args.steps, args.warmup)
        idx = rng.choice(train_idx, size=args.batch, replace=False)
        target = torch.tensor([letters[meta[i]["answer"]] for i in idx])
        video = [] if aux is not None else None
        logits, cap = run(idx, video, caption=bool(args.caption))
        loss = torch.nn.functional.cross_entropy(logits, target)
        if cap is not None:
            rec_cap.append(cap.item())
            loss = loss + args.caption * cap
        if aux is not None:
            a = aux.loss(video, [torch.from_numpy(cover_all[i, : meta[i]["frames"]].reshape(-1)) for i in idx],
                         [torch.from_numpy(shapes_all[i, : meta[i]["frames"]]).repeat_interleave(v2.GRID ** 2) for i in idx])
            loss = loss + args.aux * a
            rec_aux.append(a.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        now = time.time()
        elapsed += now - t_last
        t_last = now
        losses.append(loss.item() - (args.aux * rec_aux[-1] if aux is not None else 0.0)
                      - (args.caption * rec_cap[-1] if cap is not None else 0.0))
        if step % args.log_every == 0:
            rec = {"step": step, "time_s": round(elapsed), "loss": round(float(np.mean(losses)), 4),
                   "s_per_step": round(elapsed / step, 2) if not ckpt else None}
            if rec_aux:
                rec["aux"] = round(float(np.mean(rec_aux)), 4)
            if rec_cap:
                rec["caption"] = round(float(np.mean(rec_cap)), 4)
            losses, rec_aux, rec_cap = [], [], []
            print(json.dumps(rec), file=log, flush=True)
        if step % args.eval_every == 0 or step == args.steps:
            acc, by = evaluate()
            t_last = time.time()  # evaluation time is not training time
            print(json.dumps({"step": step, "time_s": round(elapsed), "eval": round(acc, 3), "by_type": by}), file=log,
                  flush=True)
            improved = acc >= best
            best = max(best, acc)
            save(improved)
        elif step % args.ckpt_every == 0:
            save(False)
        if step % 25 == 0 and n < feats.shape[0]:  # the cache is still growing: train on every clip it holds by now
            meta = json.loads((root / "meta.json").read_text())
            n = len(meta)
            train_idx = np.arange(args.held, n)
    save(False)
    print(f"stopped at step {step} ({elapsed / 60:.1f} min of training); best held-out {best:.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache")
    c.add_argument("--n", type=int, default=4000)
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--out", default="out/testbed_v2/cache")
    m = sub.add_parser("masks", help="auxiliary targets of a cache (object coverage and shape per token)")
    m.add_argument("--out", default="out/testbed_v2/cache")
    m.add_argument("--seed", type=int, default=1, help="the cache's --seed")
    t = sub.add_parser("train")
    t.add_argument("--cache", default="out/testbed_v2/cache")
    t.add_argument("--dir", default="out/testbed_v2", help="curve.jsonl, ckpt.pt and best.pt go here")
    t.add_argument("--resume", action="store_true", help="continue from DIR/ckpt.pt (same settings, same schedule)")
    t.add_argument("--init", help="start from these trained weights (testbed_v2.pt, best.pt) with a new schedule")
    t.add_argument("--steps", type=int, default=6000, help="length of the cosine schedule; training stops there")
    t.add_argument("--minutes", type=float, default=0, help="also stop after this many minutes (0: no limit)")
    t.add_argument("--batch", type=int, default=4)
    t.add_argument("--lr", type=float, default=2e-4, help="projector and image_newline (1e-3 blew the projector's "
                   "output norm up 10x in 50 steps of batch 4)")
    t.add_argument("--lora", type=int, default=v2.LORA_RANK, help="LoRA rank on the LM (0: the LM stays frozen)")
    t.add_argument("--lora-lr", type=float, default=2e-4)
    t.add_argument("--aux", type=float, default=0.0, help="weight of the auxiliary object losses (needs `masks`)")
    t.add_argument("--caption", type=float, default=0.0, help="weight of the caption loss: the reply is the letter "
                   "then a caption of the clip (data_v2.describe; needs `masks`), every caption token supervised")
    t.add_argument("--warmup", type=int, default=20)
    t.add_argument("--held", type=int, default=100, help="the first HELD cached clips are held out")
    t.add_argument("--eval-every", type=int, default=50)
    t.add_argument("--ckpt-every", type=int, default=25)
    t.add_argument("--log-every", type=int, default=5)
    t.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    {"cache": cache, "masks": masks, "train": train}[args.cmd](args)


if __name__ == "__main__":
    main()
