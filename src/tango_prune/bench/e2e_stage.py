"""``bench --llm-stage``: time to first token and decode with the stage inside the LLM (``models.llm_stage``) against
pruning before the LLM only, at the same average retention, on one random-weight model of a real shape.

Per method and target retention r, two rows on the same video (the tower runs once per frame count):

- pre-LLM only: the method keeps r of the video tokens; every decoder layer sees them;
- with the stage (K layers, keep k): the method keeps r_pre = L r / (K + (L - K) k) before the LLM (the release's
  rescaling, ``LLMStage.pre_llm_retention``), layers 0..K-1 see them, layers K..L-1 see k of them, so the share
  averaged over the L layers is r.

Both go through the handle's public path, ``model.generate(..., video_tokens=[...])`` on the tower's output:
prefill is the time from the call to the first token's logits less the pruning inside it (its own column), decode
the time per later token. ``none``, when asked for, is the stock model through the same path. After a warm-up
round, each round times every row once in turn (medians over ``repeats`` rounds).

Token counts are video positions as the LLM sees them (LLaVA: the kept tokens and the video's newline);
``mean_share`` = (K before + (L - K) after) / (L full), at full depth. With ``--layers`` the stage's layer is cut
in proportion (at least 1, below the cut depth), r_pre stays the full depth's, and times are scaled per layer as
``bench`` does (labelled estimated).
"""
from __future__ import annotations

import gc
import statistics
import time

import torch

from ..methods import get_method
from ..models import apply
from ..models.llm_stage import PRESETS, LLMStage
from .archs import ARCHS, build, flops
from .e2e import SALIENCY_FREE, _peak_gb, _peak_reset, _sync, check_device, depth_scales, finalize, measure_tower, scale


def parse_stage(text: str) -> LLMStage:
    """``llava-video`` (the release's: layer 18 of 28, keep 0.5) or ``LAYER/KEEP`` (e.g. 18/0.5)."""
    text = str(text).strip()
    if text in PRESETS:
        return PRESETS[text]
    msg = f"--llm-stage takes a preset ({', '.join(sorted(PRESETS))}) or LAYER/KEEP such as 18/0.5, got {text!r}"
    parts = text.split("/")
    if len(parts) != 2:
        raise ValueError(msg)
    try:
        layer, keep = int(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(msg) from None
    return LLMStage(layer=layer, keep=keep)


def stage_label(stage: LLMStage | None) -> str | None:
    return None if stage is None else f"{stage.layer}/{stage.keep:g}"


def check(arch: str, stage: LLMStage, layers: int | None) -> LLMStage:
    """The stage to install on the model that runs (cut in proportion with ``layers``); one-line errors first,
    before a model is built."""
    if arch not in ARCHS:
        raise ValueError(f"--arch must be one of {sorted(ARCHS)}, got {arch!r}")
    family, _, txt = ARCHS[arch]
    if family == "qwen3":
        raise ValueError("--llm-stage does not run on qwen3-vl shapes: their deepstack features cannot be passed "
                         "as video_tokens")
    L = txt["num_hidden_layers"]
    if stage.layer >= L:
        raise ValueError(f"--llm-stage layer must be below {arch}'s {L} decoder layers, got {stage.layer}")
    n = layers or L
    if n < 2:
        raise ValueError("--llm-stage needs at least 2 decoder layers (--layers 2 or more)")
    k = stage.layer if not layers else min(n - 1, max(1, round(stage.layer * n / L)))
    return LLMStage(layer=k, keep=stage.keep, blend=stage.blend, rescale=False)


def run(arch: str, frames: list[int], methods: list[tuple[str, str, dict]], retentions: list[float], stage: LLMStage,
        dtype=torch.bfloat16, repeats: int = 2, decode_tokens: int = 4, layers: int | None = None,
        progress: bool = True, device: str = "cpu") -> list[dict]:
    """Rows for every frame count and (label, name, options) in ``methods`` ('none' once, every other method at
    each retention without and with ``stage``), then TTFT, speed-ups and the ratios between each pair of rows."""
    from tqdm import tqdm

    installed = check(arch, stage, layers)
    if not any(name != "none" for _, name, _ in methods):
        raise ValueError("--llm-stage compares a pruning method with and without the stage; add one, e.g. --methods tango")
    if decode_tokens < 1:
        raise ValueError("--llm-stage times decoding too: --decode-tokens must be at least 1")
    for _, name, opts in methods:
        get_method(name)(retention=0.5, **opts)  # unknown options: one line before the model is built
    check_device(device)
    vis_scale, llm_scale, vision_layers = depth_scales(arch, layers)
    full_layers = ARCHS[arch][2]["num_hidden_layers"]
    model, family = build(arch, dtype, layers=layers, vision_layers=vision_layers)
    model = model.to(device)
    plain = any(name in SALIENCY_FREE for _, name, _ in methods)
    jobs = [(m, r, s) for m in methods
            for r in ([1.0] if m[1] == "none" else retentions) for s in ([None] if m[1] == "none" else [None, stage])]
    bar = tqdm(total=len(frames) * len(jobs) * (repeats + 1), desc=f"bench --llm-stage {arch}", disable=not progress)
    rows = []
    with torch.inference_mode():
        for f in frames:
            tower = dict(measure_tower(model, family, f, repeats, dtype, plain=plain), frames=f)
            calls = [Call(model, family, tower, label, name, opts, r, s, s and installed, full_layers, decode_tokens)
                     for (label, name, opts), r, s in jobs]
            _peak_reset(device)
            for rnd in range(repeats + 1):  # a warm-up round, then rounds that time every row once in turn
                for c in calls:
                    c.once(timed=rnd > 0)
                    bar.update()
            for c in calls:
                row = scale(c.row(_peak_gb(device)), family, vis_scale, llm_scale, arch=arch, dtype=dtype,
                            device=device, layers=layers)
                row["decode_s_per_token"] *= llm_scale
                rows.append(row)
            del calls, tower
            gc.collect()
    bar.close()
    finalize(rows)
    relate(rows)
    return rows


class Call:
    """One row: ``generate`` on the tower's tokens through a handle made for each call (so that the rows of a frame
    count can take turns: a change in the machine's load then falls on all of them alike); medians of the timed
    calls. Peak memory is that of the whole frame count."""

    def __init__(self, model, family: str, tower: dict, label: str, method: str, opts: dict, retention: float,
                 stage: LLMStage | None, installed: LLMStage | None, full_layers: int, decode_tokens: int) -> None:
        self.model, self.family, self.tower, self.label, self.method = model, family, tower, label, method
        self.retention, self.stage, self.full_layers, self.decode_tokens = retention, stage, full_layers, decode_tokens
        self.vt = tower["salient"] if method not in SALIENCY_FREE else tower["plain"]
        self.kw = {k: v for k, v in tower["base"].items() if k != "pixel_values_videos"}
        self.r_pre = 1.0 if method == "none" else stage.pre_llm_retention(retention, full_layers) if stage else retention
        if family == "llava" and method == "tango" and "sink_indices" not in opts:
            # the sinks the adapter picks for this grid, given explicitly: its own preset path would hand llm_stage
            # on to the pruner as a Tango option and fail (LlavaOnevisionHandle._pruner_for passes its method_opts)
            from ..models.llava_ov import sink_preset

            preset = sink_preset(method, False, self.vt.grid[1:])
            opts = dict(opts, **({"sink_indices": preset} if preset else {}))
        self.opts = dict(opts, **({} if installed is None else {"llm_stage": installed}))
        self.installed = installed
        self.runs: list[dict] = []

    def once(self, timed: bool = True) -> None:
        from transformers import LogitsProcessor, LogitsProcessorList

        marks: list[float] = []

        class Mark(LogitsProcessor):  # called once per generated token, right after its forward
            def __call__(self, input_ids, scores):
                _sync()
                marks.append(time.perf_counter())
                return scores

        n_new = 1 + self.decode_tokens
        with apply(self.model, self.method, self.r_pre, **self.opts) as h:
            _sync()
            t = time.perf_counter()
            self.model.generate(**self.kw, video_tokens=[self.vt], max_new_tokens=n_new, min_new_tokens=n_new,
                                do_sample=False, logits_processor=LogitsProcessorList([Mark()]))
            s = dict(h.last_stats[0])
        if timed:
            self.runs.append({"stats": s, "prune_s": s["prune_s"], "prefill_s": marks[0] - t - s["prune_s"],
                              "decode_s": (marks[-1] - marks[0]) / self.decode_tokens})

    def row(self, peak_gb: float | None) -> dict:
        med = {k: statistics.median(r[k] for r in self.runs) for k in ("prune_s", "prefill_s", "decode_s")}
        s, ids, stage, tower = self.runs[-1]["stats"], self.kw["input_ids"], self.stage, self.tower
        full = int((ids == self.model.config.video_token_id).sum())
        before = int(s["llm_tokens"])
        after = int(s.get("llm_tokens_after_stage", before)) if stage else before
        seq = int(ids.shape[1]) - full + before
        L, K = self.full_layers, stage.layer if stage else self.full_layers
        fv, f_before = flops(self.model, self.family, tower["frames"], seq)
        _, f_after = flops(self.model, self.family, tower["frames"], seq - (before - after))
        n = self.model.config.text_config.num_hidden_layers  # the model that ran; its K is in proportion
        k = self.installed.layer if self.installed else n
        return {
            "frames": tower["frames"], "method": self.label, "retention": self.retention,
            "llm_stage": stage_label(stage), "pre_llm_retention": self.r_pre, "vision_s": tower["vision_s"],
            "saliency_s": tower["saliency_s"] if self.method not in SALIENCY_FREE else 0.0, "prune_s": med["prune_s"],
            "prefill_s": med["prefill_s"], "decode_s_per_token": med["decode_s"], "decode_tok_s": 1 / med["decode_s"],
            "peak_mem_gb": peak_gb, "flops_vision": fv, "flops_llm": (k * f_before + (n - k) * f_after) / n,
            "tokens_kept": int(s["tokens_kept"]), "segments": s.get("segments"), "video_tokens_full": full, "video_tokens": before,
            "video_tokens_after_stage": after if stage else None, "llm_tokens": seq,
            "llm_tokens_after_stage": seq - (before - after) if stage else None,
            "mean_share": (K * before + (L - K) * after) / (L * full),
        }


def relate(rows: list[dict]) -> None:
    """On each row with the stage: its pre-LLM-only row's time over its own (above 1: the stage is faster)."""
    pre = {(r["frames"], r["method"], r["retention"]): r for r in rows if r["llm_stage"] is None}
    for r in rows:
        p = pre.get((r["frames"], r["method"], r["retention"])) if r["llm_stage"] else None
        for key, src in (("ttft_ratio", "ttft_s"), ("prefill_ratio", "prefill_s"), ("decode_ratio", "decode_s_per_token")):
            r[key] = p[src] / r[src] if p and r[src] else None


def format_table(rows: list[dict]) -> str:
    head = (f"{'frames':>6} {'method':<9}{'r':>6} {'stage':<7}{'r pre':>7}{'video in':>9}{'after':>7}{'mean':>7}"
            f"{'prune s':>9}{'prefill s':>10}{'TTFT s':>9}{'dec s/tok':>10}{'speedup':>9}{'TTFT x':>8}"
            f"{'dec x':>7}{'peak GB':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        def x(v):
            return "-" if v is None else f"{v:.2f}x"

        after = "-" if r["video_tokens_after_stage"] is None else str(r["video_tokens_after_stage"])
        lines.append(
            f"{r['frames']:>6} {r['method']:<9}{r['retention']:>6g} {r['llm_stage'] or '-':<7}{r['pre_llm_retention']:>7.4f}"
            f"{r['video_tokens']:>9}{after:>7}{r['mean_share']:>7.3f}{r['prune_s']:>9.3f}{r['prefill_s']:>10.2f}"
            f"{r['ttft_s']:>9.2f}{r['decode_s_per_token']:>10.3f}{x(r.get('speedup')):>9}{x(r.get('ttft_ratio')):>8}"
            f"{x(r.get('decode_ratio')):>7}{r['peak_mem_gb'] or 0:>8.1f}")
    for f in sorted({r["frames"] for r in rows}):
        r = next(r for r in rows if r["frames"] == f)
        sal = max(q["saliency_s"] for q in rows if q["frames"] == f)
        lines.append(f"{f} frames: vision {r['vision_s']:.2f} s, saliency {sal:.3f} s (in every TTFT that uses it), "
                     f"{r['video_tokens_full']} video tokens in full")
    lines.append("video in / after: video tokens entering the LLM / after the stage; mean: their share averaged over "
                 "the layers; TTFT x, dec x: the pre-LLM-only row's time over the stage row's")
    if any(r["estimated"] for r in rows):
        lines.append("ESTIMATED: depth-reduced model, times scaled per layer (--layers)")
    return "\n".join(lines)
