"""The testbeds' one training loop (``python -m tango_prune.testbed.train train``; train.py has the command line and
the feature cache). Full tokens only, so pruning stays training-free: the projector, image_newline and the
variant's trainable LM part (v1: the whole decoder; v2: LoRA factors) learn to answer the cached clips' questions.

Writes DIR/curve.jsonl (every --log-every steps the mean losses; every --eval-every steps the held-out accuracy per
type), DIR/ckpt.pt (everything ``--resume`` needs: weights, heads, optimiser, step, RNG, settings) and DIR/best.pt
(the best held-out evaluation's weights, loadable by ``model.load``). The schedule is a linear warm-up then a cosine
over --steps, or, with --steps 0, over --minutes of training (v1's runs).
"""
from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from ..hardware import default_dtype
from . import variants
from .batch import batch_embeds, mixed_grids, pool_frames, pool_shapes, pool_targets, reply_ids
from .data import TYPES
from .lora import LoRA
from .losses import OBJECT, AttentionTap, Heads, background_attention_loss
from .model import build, load_state, n_trained, trained_state
from .prompt import letter_ids, tokenizer
from .warmstart import pretrain_projector, whiten_projector

FAST_BF16 = default_dtype() == torch.bfloat16  # autocast only where bf16 is native: emulated, it is ~10x slower
# a resumed run keeps these settings of its own (train.main); the rest (--steps, --minutes, ...) the command line may change
SAVED = ("testbed", "cache", "n", "lora", "held", "batch", "lr", "proj_lr_mult", "lm_lr", "weight_decay", "warmup",
         "aux", "shape_aux", "shape_min", "aux_layer", "attn_sup", "caption", "ce", "stock_share", "attn_dropout")


def lr_factor(step: int, warmup: int, progress: float) -> float:
    """Linear warm-up over the first ``warmup`` steps, then a cosine over ``progress`` (0 -> 1)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def train(args) -> None:
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_file = out / "ckpt.pt"
    ckpt = torch.load(ckpt_file, weights_only=False) if args.resume and ckpt_file.is_file() else None
    if args.resume and ckpt is None:
        raise SystemExit(f"--resume: no checkpoint at {ckpt_file}")
    v = variants.get(args.testbed)
    root = Path(args.cache)
    meta = json.loads((root / "meta.json").read_text())
    feats = np.load(root / "feats.npy", mmap_mode="r")
    n = len(meta) if args.n is None else min(args.n, len(meta))
    labels = bool(args.aux or args.shape_aux or args.attn_sup or args.caption)
    if labels:
        if not (root / "masks.npy").is_file():
            raise SystemExit(f"--aux/--shape-aux/--attn-sup/--caption need {root}/masks.npy: run `python -m "
                             f"tango_prune.testbed.train masks --testbed {v.name} --out {root}`")
        cover_all, shapes_all = np.load(root / "masks.npy"), np.load(root / "shapes.npy")
        n = min(n, len(cover_all))
    if n <= args.held + args.batch:
        raise SystemExit(f"only {n} cached clips; need more than --held {args.held} + a batch")
    train_idx, val_idx = np.arange(args.held, n), np.arange(args.held)

    def frames_of(i) -> int:
        return meta[i].get("frames", v.clips.frames[1])  # v1's caches are all 16 frames and do not say so

    torch.manual_seed(args.seed)
    model = build(v, seed=args.seed)
    lm = model.model.language_model
    if args.lora and v.lm == "scratch":
        raise SystemExit(f"--lora adapts a pretrained LM; {v.name}'s decoder trains whole")
    if v.lm != "scratch" and FAST_BF16:
        lm.to(torch.bfloat16)  # frozen: its weights need no fp32 master copy
    lora = LoRA(lm, rank=args.lora).attach() if args.lora else None
    if args.attn_dropout:  # training only, so that no answer hangs on a few keys (v1: it did not help, data card)
        for layer in lm.layers:
            layer.self_attn.attention_dropout = args.attn_dropout
    model.train()
    proj = [p for k, p in model.named_parameters() if "multi_modal_projector" in k or "image_newline" in k]
    width = model.config.text_config.hidden_size
    heads = None
    if args.aux or args.shape_aux:
        heads = torch.nn.ModuleDict({"tokens": Heads(width), **({"layer": Heads(width)} if args.aux_layer else {})})
    lm_params = list(lora.parameters()) if lora is not None else [
        p for p in model.parameters() if p.requires_grad and all(p is not q for q in proj)]
    groups = [{"params": ps, "lr": base, "base_lr": base} for ps, base in (
        (proj, args.lr * args.proj_lr_mult), ([] if heads is None else list(heads.parameters()), args.lr),
        (lm_params, args.lm_lr)) if ps]
    opt = torch.optim.AdamW(groups, weight_decay=args.weight_decay, betas=(0.9, 0.98))
    params = [p for g in groups for p in g["params"]]
    tok = tokenizer(v)
    letters = letter_ids(v, tok)
    tap = AttentionTap(lm) if args.attn_sup else None
    rng = np.random.default_rng(args.seed)
    step, elapsed, best = 0, 0.0, -1.0
    log = open(out / "curve.jsonl", "a")

    def record(rec: dict) -> None:
        print(json.dumps(rec), file=log, flush=True)

    if ckpt is not None:
        lo = load_state(v, model, ckpt["trained"])
        if lora is not None:
            lora.load_state_dict(lo.state_dict())
        if heads is not None:
            heads.load_state_dict(ckpt["heads"])
        opt.load_state_dict(ckpt["opt"])
        step, elapsed, best = ckpt["step"], ckpt["elapsed"], ckpt["best"]
        rng.bit_generator.state = ckpt["rng"]
    elif args.init:  # trained weights (e.g. the committed ones): a new schedule and fresh Adam moments
        lo = load_state(v, model, torch.load(args.init, weights_only=True))
        if (lo is None) != (lora is None) or (lo is not None and lo.rank != lora.rank):
            raise SystemExit(f"--init {args.init}: LoRA rank {0 if lo is None else lo.rank}, this run's --lora {args.lora}")
        if lora is not None:
            lora.load_state_dict(lo.state_dict())
    else:
        whiten_projector(model, np.concatenate([feats[i, : frames_of(i)] for i in train_idx[:32]]))

    def features(idx) -> list[torch.Tensor]:
        return [torch.from_numpy(feats[i, : frames_of(i)].astype(np.float32)) for i in idx]

    def targets(idx, grids):
        """Per token of the batch: object coverage and shape index, laid out as pool_frames lays the tokens."""
        cover = torch.cat([pool_targets(cover_all[i, : frames_of(i)], None if grids is None else grids[k])
                           for k, i in enumerate(idx)])
        shapes = torch.cat([pool_shapes(shapes_all[i, : frames_of(i)], [v.grid**2] * frames_of(i) if grids is None
                                        else [int(g) ** 2 for g in grids[k]]) for k, i in enumerate(idx)])
        return cover, shapes

    def run(idx, grids=None, keep=None):
        """Logits (B, vocab) where each clip's answer letter is read, and the training-only losses."""
        supervise = keep is None and model.training
        replies = None
        if args.caption and supervise:
            replies = [reply_ids(v, meta[i], cover_all[i, : frames_of(i)].astype(np.float32),
                                 shapes_all[i, : frames_of(i)], tok) for i in idx]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=FAST_BF16):
            videos = pool_frames(model, features(idx), grids)
            if keep is not None:  # evaluation only: a random share of the tokens, positions compacted
                g = torch.Generator().manual_seed(int(idx[0]))
                videos = [x[torch.randperm(len(x), generator=g)[: max(1, round(keep * len(x)))].sort().values]
                          for x in videos]
            emb, mask, pos, is_video = batch_embeds(model, v, videos, [meta[i] for i in idx], tok, replies)
            if tap is not None:
                tap.inputs.clear()
            states = lm(inputs_embeds=emb, attention_mask=mask, position_ids=pos,
                        output_hidden_states=heads is not None and "layer" in heads)
            h, L = states.last_hidden_state, emb.shape[1]
            at = torch.tensor([L - 1 - (len(replies[b]) if replies else 0) for b in range(len(idx))])
            logits = model.lm_head(h[torch.arange(len(idx)), at]).float()
            losses = {}
            if replies:  # row b's reply r occupies the last len(r) positions; position p predicts token p + 1
                rows = torch.cat([torch.full((len(r) - 1,), b) for b, r in enumerate(replies)])
                cols = torch.cat([torch.arange(L - len(r), L - 1) for r in replies])
                target = torch.cat([torch.tensor(r[1:]) for r in replies])
                losses["caption"] = torch.nn.functional.cross_entropy(model.lm_head(h[rows, cols]).float(), target)
            if supervise and (heads is not None or tap is not None):
                cover, shapes = targets(idx, grids)
                if heads is not None:
                    c, s = heads["tokens"].losses(torch.cat(videos), cover, shapes, args.shape_min)
                    if "layer" in heads:
                        c2, s2 = heads["layer"].losses(states.hidden_states[args.aux_layer][is_video], cover, shapes,
                                                       args.shape_min)
                        c, s = c + c2, s + s2
                    losses.update({k: x for k, x, w in (("aux", c, args.aux), ("shape", s, args.shape_aux)) if w})
                if tap is not None:
                    obj = torch.zeros_like(is_video)
                    obj[is_video] = cover >= OBJECT
                    losses["attn"] = background_attention_loss(tap, is_video, obj, mask)
        return logits, losses

    def evaluate(keep=None, mixed=False):
        model.eval()
        by: dict = {}
        layouts = np.random.default_rng(0)  # the same mixed layouts at every evaluation
        with torch.no_grad():
            for s in range(0, len(val_idx), args.batch):
                idx = val_idx[s : s + args.batch]
                grids = mixed_grids(layouts, [frames_of(i) for i in idx], v.grid) if mixed else None
                pred = run(idx, grids, keep)[0][:, letters].argmax(-1)
                for i, p in zip(idx, pred.tolist()):
                    by.setdefault(meta[i]["qtype"], []).append(int(p == meta[i]["answer"]))
        model.train()
        acc = sum(sum(x) for x in by.values()) / len(val_idx)
        return acc, {t: round(sum(by[t]) / len(by[t]), 3) for t in TYPES if t in by}

    def save(best_too: bool) -> None:
        state = trained_state(v, model, lora)
        tmp = out / "ckpt.pt.tmp"
        torch.save({"trained": state, "heads": None if heads is None else heads.state_dict(), "opt": opt.state_dict(),
                    "step": step, "elapsed": elapsed, "best": best, "rng": rng.bit_generator.state, "args": vars(args)}, tmp)
        tmp.replace(ckpt_file)
        if best_too:
            torch.save(state, out / "best.pt")

    def evaluate_and_save() -> None:
        nonlocal best, t_last
        acc, by = evaluate()
        rec = {"step": step, "time_s": round(elapsed), "eval": round(acc, 3), "by_type": by}
        if args.stock_share < 1 or args.attn_dropout:  # does it read layouts it was not shown, or a compacted drop?
            rec["eval_mixed"], rec["eval_drop30_compact"] = round(evaluate(mixed=True)[0], 3), round(evaluate(0.3)[0], 3)
        record(rec)
        t_last = time.time()  # evaluation time is not training time
        improved = acc >= best
        best = max(best, acc)
        save(improved)

    if args.probe_minutes and ckpt is None and not args.init:
        def cover_loss(idx, videos):
            return args.aux * heads["tokens"].losses(torch.cat(videos), *targets(idx, None), args.shape_min)[0]

        with_aux = heads is not None and args.aux
        pretrain_projector(model, lambda idx: pool_frames(model, features(idx)), meta, train_idx, val_idx,
                           args.probe_minutes, min(16, len(train_idx)), rng, v.video_tokens(v.clips.frames[1]) - 1,
                           cover_loss if with_aux else None, heads["tokens"].parameters() if with_aux else (),
                           FAST_BF16, record)
    start = "resuming at step %d" % step if ckpt else f"from {args.init}" if args.init else "from scratch"
    print(f"{v.name}: trained params {n_trained(v, model, lora) / 1e6:.2f} M; clips train {len(train_idx)} held-out "
          f"{len(val_idx)}; {start}", flush=True)
    if args.init and ckpt is None:  # where the loaded weights start, on this cache
        evaluate_and_save()
    weights = {"aux": args.aux, "shape": args.shape_aux, "attn": args.attn_sup, "caption": args.caption}
    timed, begun, evaluated = not args.steps, time.time(), step
    t_last, logged = time.time(), defaultdict(list)
    while True:
        if timed and elapsed >= args.minutes * 60 or not timed and (
                step >= args.steps or args.minutes and time.time() - begun >= args.minutes * 60):
            break
        progress = elapsed / (args.minutes * 60) if timed else (step - args.warmup) / max(1, args.steps - args.warmup)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * lr_factor(step, args.warmup, progress)
        idx = rng.choice(train_idx, size=args.batch, replace=False)
        mixed = args.stock_share < 1 and rng.random() >= args.stock_share  # one layout kind per batch
        logits, losses = run(idx, mixed_grids(rng, [frames_of(i) for i in idx], v.grid) if mixed else None)
        answers = torch.tensor([meta[i]["answer"] for i in idx])
        if args.ce == "letters":  # 4-way over the letters (v1)
            answer_loss = torch.nn.functional.cross_entropy(logits[:, letters], answers)
        else:  # over the whole vocabulary (v2: a chat model's letter must win against every token)
            answer_loss = torch.nn.functional.cross_entropy(logits, letters[answers])
        loss = answer_loss + sum(weights[k] * x for k, x in losses.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        now = time.time()
        elapsed += now - t_last
        t_last = now
        for k, x in {"loss": answer_loss, **losses}.items():
            logged[k].append(x.item())
        if step % args.log_every == 0:
            rec = {"step": step, "time_s": round(elapsed), **{k: round(float(np.mean(x)), 4) for k, x in logged.items()}}
            rec["s_per_step"] = None if ckpt else round(elapsed / step, 2)
            logged.clear()
            record(rec)
        if step % args.eval_every == 0 or step == args.steps:
            evaluate_and_save()
            evaluated = step
        elif step % args.ckpt_every == 0:
            save(False)
        if step % 25 == 0 and not labels and args.n is None and n < feats.shape[0]:  # the cache is still growing
            meta = json.loads((root / "meta.json").read_text())
            n = len(meta)
            train_idx = np.arange(args.held, n)
    if evaluated != step:
        evaluate_and_save()
    save(False)
    print(f"stopped at step {step} ({elapsed / 60:.1f} min of training); best held-out {best:.3f}", flush=True)
