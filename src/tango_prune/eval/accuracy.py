"""Accuracy with ground truth: every method and ratio on the same multiple-choice questions, through ``apply``.

The tower runs once per clip (``handle.encode_videos``); each (method, retention) then prunes those tokens and runs
the LLM (``model(..., video_tokens=...)``), so the comparison costs one tower pass per clip, not one per method.
Besides accuracy, each row carries two label-free numbers against the full-token run of the same question: the KL
divergence of the next-token distribution, KL(full || pruned), and top-1 agreement.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..methods import get_method


@dataclass
class QA:
    """What the eval needs from a model: its inputs for a sample and the option (0-3) its logits choose. A sample is
    anything with ``qtype`` and ``answer`` that ``inputs`` understands (the testbed's ``data.Sample``; the testbed
    builds its QAs in ``testbed.qa``)."""

    model: object
    inputs: Callable[[Any], dict]
    choice: Callable[[torch.Tensor], int]
    name: str = "model"


def _jobs(methods, retentions):
    jobs = [("none", "none", {}, 1.0)]
    from ..encoders.reuse import resolve_encoder

    for label, name, opts in methods:
        # the encoder stage and chunking are the adapter's options, not the method's
        own = {k: v for k, v in opts.items() if k not in ("encoder", "chunk_frames", "max_carry")}
        resolve_encoder(opts.get("encoder"))  # bad options fail now, not after the tower has run
        if name == "none":
            if "encoder" in opts:  # all tokens, from the stage's tower
                jobs.append((label, name, opts, 1.0))
            continue
        for r in retentions:
            get_method(name)(retention=r, **own)
            jobs.append((label, name, opts, r))
    return jobs


@torch.no_grad()
def evaluate(qa: QA, samples: list, methods: list[tuple[str, str, dict]], retentions: list[float],
             progress: bool = True, adapter_opts: dict | None = None) -> list[dict]:
    """One row per (method, retention), 'none' (retention 1.0) first; see the module docstring. ``adapter_opts``
    go to every ``apply`` (e.g. ``positions``). ``by_type`` lists the question types in the order they first appear."""
    from tqdm import tqdm

    from ..models import apply

    jobs = _jobs(methods, retentions)
    stages = len({repr(o.get("encoder")) for _, _, o, _ in jobs} | {"None"})
    bar = tqdm(total=len(samples) * (len(jobs) + stages), desc="eval", disable=not progress, unit="run")
    adapter_opts = adapter_opts or {}
    towers: dict = {}  # the tower runs once per encoder setting (None: stock); every method reuses its tokens

    def encoded(encoder) -> tuple[list, float | None]:
        key = repr(encoder)
        if key not in towers:
            base = apply(qa.model, method="none", retention=1.0, encoder=encoder, **adapter_opts)
            out, shares = [], []
            try:
                for s in samples:
                    inp, ctx = qa.inputs(s), {}
                    out.append((inp, base.encode(dict(inp), ctx)[0]))
                    shares += ctx.get("encoder_computed", [])
                    bar.update()
            finally:
                base.remove()
            towers[key] = out, (sum(shares) / len(shares) if shares else None)
        return towers[key]

    encoded(None)
    rows, full_logp = [], []
    for label, name, opts, r in jobs:
        opts = dict(opts)
        encoder = opts.pop("encoder", None)
        tokens, computed = encoded(encoder)
        handle = apply(qa.model, method=name, retention=r, **opts, **adapter_opts)
        try:
            correct, by_type, kl, agree, kept, secs = [], {}, [], [], [], 0.0
            for i, (s, (inp, vts)) in enumerate(zip(samples, tokens)):
                ids = {k: v for k, v in inp.items() if k not in ("pixel_values_videos", "video_timestamps")}
                t = time.perf_counter()
                last = qa.model(**ids, video_tokens=vts).logits[:, -1:].float()
                secs += time.perf_counter() - t
                kept.append(sum(st["tokens_kept"] for st in handle.last_stats))
                ok = int(qa.choice(last) == s.answer)
                logits = last[:, -1]
                correct.append(ok)
                by_type.setdefault(s.qtype, []).append(ok)
                logp = torch.log_softmax(logits, -1)
                if name == "none":
                    full_logp.append(logp)
                kl.append(float((full_logp[i].exp() * (full_logp[i] - logp)).sum()))
                agree.append(float(logp.argmax(-1).eq(full_logp[i].argmax(-1)).float().mean()))
                bar.update()
        finally:
            handle.remove()
        n = len(samples)
        rows.append({"method": label, "retention": r, "accuracy": sum(correct) / n, "n": n,
                     "by_type": {t: sum(v) / len(v) for t, v in by_type.items()},
                     "kl": sum(kl) / n, "top1_agreement": sum(agree) / n, "tokens_kept_mean": sum(kept) / n,
                     "llm_seconds_mean": secs / n, "correct": correct, "encoder_computed": computed})
    bar.close()
    full = rows[0]["accuracy"]
    for row in rows:
        row["relative_accuracy"] = row["accuracy"] / full if full else float("nan")
    return rows


def format_table(rows: list[dict]) -> str:
    types = list(rows[0]["by_type"])
    head = (f"{'method':<20}{'ret.':>6}{'acc':>7}{'rel':>8}{'kept':>7}{'KL':>8}{'top1':>7}"
            + "".join(f"{t[:11]:>12}" for t in types))
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['method']:<20}{r['retention']:>6g}{r['accuracy']:>7.3f}{r['relative_accuracy']:>8.1%}"
                     f"{r['tokens_kept_mean']:>7.0f}{r['kl']:>8.3f}{r['top1_agreement']:>7.3f}"
                     + "".join(f"{r['by_type'].get(t, float('nan')):>12.3f}" for t in types))
    for r in rows:
        if r.get("encoder_computed") is not None:
            lines.append(f"{r['method']}: the encoder stage ran {r['encoder_computed']:.1%} of the tokens past its gate")
    lines.append(f"n = {rows[0]['n']} questions; rel = accuracy / accuracy of none; KL(full || pruned) and top1 agreement "
                 "of the next-token distribution against the full-token run (label-free)")
    return "\n".join(lines)


def paired_differences(rows: list[dict], against: str = "tango") -> list[dict]:
    """Accuracy of ``against`` minus each other method's at the same retention, on the same questions, with the
    standard error of that mean difference (paired: per-question outcomes, so much tighter than comparing two
    accuracies' own errors). Empty when ``against`` is not among the rows."""
    import math

    base = {r["retention"]: r for r in rows if r["method"] == against}
    out = []
    for r in rows:
        b = base.get(r["retention"])
        if b is None or r["method"] == against or r["method"] == "none":
            continue
        d = [x - y for x, y in zip(b["correct"], r["correct"])]
        mean = sum(d) / len(d)
        se = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d)) if len(d) > 1 else float("nan")
        out.append({"method": r["method"], "retention": r["retention"], "difference": mean, "se": se})
    return out


def format_paired(diffs: list[dict], against: str = "tango") -> str:
    lines = [f"{against} minus each method, same questions (paired standard error):"]
    for d in diffs:
        lines.append(f"  {d['method']:<20}{d['retention']:>6g}{d['difference']:>+8.3f} +- {d['se']:.3f}")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    full = rows[0]["accuracy"]
    ax.axhline(full, color="k", ls="--", lw=1, label=f"none (all tokens) {full:.3f}")
    for m in dict.fromkeys(r["method"] for r in rows[1:]):
        pts = sorted((r["retention"], r["accuracy"]) for r in rows if r["method"] == m)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", lw=2.5 if m.startswith("tango") else 1.2, label=m)
    ax.set_xlabel("retention (share of video tokens kept)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"accuracy vs retention, n = {rows[0]['n']}")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
