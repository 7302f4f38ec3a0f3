"""Time-to-first-token breakdown of a Video LLM at real shapes (random weights), per pruning method.

TTFT = vision (tower + projector + pooling) + saliency (the one attention map, only for methods that use it, timed
on its own inside the adapter's encode)
+ pruning + LLM prefill (the LM head on the last token, as generate does). The limit a pruner can reach is
(vision + full prefill) / (vision + pruned prefill): pruning cannot make the tower faster.
"""
from __future__ import annotations

import gc
import statistics
import time

import torch

from ..methods import get_method
from ..models import apply
from ..models.sequence import compact_video_runs
from .archs import ARCHS, build, flops
from .pruner import _reset_peak, _rss_gb

SALIENCY_FREE = {"none", "uniform", "random", "divprune"}


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _median(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up
    secs = []
    for _ in range(repeats):
        _sync()
        t = time.perf_counter()
        out = fn()
        _sync()  # GPU work is asynchronous: time it to completion
        secs.append(time.perf_counter() - t)
    return statistics.median(secs), out


def _peak_reset(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    else:
        _reset_peak()


def _peak_gb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else _rss_gb("VmHWM")


def _cache(out):
    c = out.get("cache") if hasattr(out, "get") else None
    return c if c is not None else out.get("past_key_values")


def video_inputs(model, family: str, frames: int, dtype, text_before: int = 32, text_after: int = 16) -> dict:
    dev = next(model.parameters()).device
    return {k: v.to(dev) for k, v in _video_inputs(model, family, frames, dtype, text_before, text_after).items()}


def _video_inputs(model, family: str, frames: int, dtype, text_before: int, text_after: int) -> dict:
    """Processor-shaped inputs for one video of ``frames`` frames at the model's resolution (random pixels)."""
    g = torch.Generator().manual_seed(0)
    cfg = model.config
    vid = cfg.video_token_id
    if family == "llava":
        side = cfg.vision_config.image_size
        n = frames * ((side // cfg.vision_config.patch_size + 1) // 2) ** 2 + 1
        ids = torch.tensor([[1] * text_before + [vid] * n + [2] * text_after])
        return {"input_ids": ids, "pixel_values_videos": torch.randn(1, frames, 3, side, side, generator=g).to(dtype)}
    v = cfg.vision_config
    # 392 x 392 frames (Qwen2.5, 14 px patches) or 448 x 448 (Qwen3, 16 px) -> 28 x 28 patches -> 14 x 14 tokens
    t, hw = max(1, frames // v.temporal_patch_size), 28
    n = t * hw * hw // v.spatial_merge_size**2
    if family == "qwen3":  # a timestamp and its own run per temporal patch: "<0.5 seconds><|vision_start|>...<|vision_end|>"
        run = [3] * 6 + [cfg.vision_start_token_id] + [vid] * (n // t) + [cfg.vision_end_token_id]
        ids = torch.tensor([[1] * text_before + run * t + [2] * text_after])
    else:
        ids = torch.tensor([[1] * text_before + [vid] * n + [2] * text_after])
    pv = torch.randn(t * hw * hw, 3 * v.temporal_patch_size * v.patch_size**2, generator=g).to(dtype)
    return {"input_ids": ids, "pixel_values_videos": pv, "video_grid_thw": torch.tensor([[t, hw, hw]]),
            "second_per_grid_ts": torch.tensor([1.0]), "mm_token_type_ids": (ids == vid).int() * 2}


def measure_tower(model, family: str, frames: int, repeats: int, dtype, plain: bool = True) -> dict:
    """Tower work, the same for every method: features alone, then features with the saliency map. With
    ``plain=False`` (no saliency-free method asked for) only the second runs, and the vision time is its time less
    the map's own."""
    base = video_inputs(model, family, frames, dtype)
    videos = [None]
    if plain:
        with apply(model, "none", 1.0, saliency="features") as h:
            vision_s, (videos, _) = _median(lambda: h.encode(dict(base), {}), repeats)
    runs: list[dict] = []

    def salient_encode():
        runs.append({})
        return full.encode(dict(base), runs[-1])

    with apply(model, "none", 1.0) as full:
        salient_s, (salient, _) = _median(salient_encode, repeats)
    # the saliency map timed on its own inside the encode (a difference of two tower runs is mostly their noise)
    saliency_s = statistics.median(r.get("saliency_s", 0.0) for r in runs[1:] or runs)
    if not plain:
        vision_s = max(0.0, salient_s - saliency_s)
    return {"base": base, "vision_s": vision_s, "saliency_s": saliency_s,
            "plain": videos[0], "salient": salient[0], "deepstack": runs[-1].get("deepstack")}


def measure(model, family: str, tower: dict, method: str, retention: float, repeats: int, decode_tokens: int) -> dict:
    base = tower["base"]
    uses_saliency = method not in SALIENCY_FREE
    vt = tower["salient"] if uses_saliency else tower["plain"]
    r = 1.0 if method == "none" else retention
    pruner = get_method(method)(retention=r)
    prune_s, kept = _median(lambda: pruner(vt), repeats)
    with apply(model, method, r) as h:
        kw, ctx = dict(base), {}
        kw.pop("pixel_values_videos")  # the tower already ran (measure_tower); only its grid bookkeeping is needed
        if family in ("qwen", "qwen3"):
            ctx.update(video_grid_thw=kw.pop("video_grid_thw"), second_per_grid_ts=kw.pop("second_per_grid_ts", None),
                       deepstack=tower["deepstack"])
        extra, full_n, short_n = h.assemble([vt], [kept], kw, ctx)
        ids = kw.pop("input_ids")
        full_n, short_n = ctx.get("run_full", full_n), ctx.get("run_short", short_n)  # Qwen3: a run per frame
        ctx["full_lengths"] = full_n
        c = compact_video_runs(ids, None, h.video_token_id(), full_n, short_n, h.pad_id())
        extra.update(h.positions(c, ids, None, [kept], kw, ctx))
        stock = type(model).forward.__get__(model)

        def prefill():
            return stock(input_ids=c.input_ids, logits_to_keep=1, use_cache=True, **extra)

        device = str(next(model.parameters()).device)
        _peak_reset(device)
        prefill_s, out = _median(prefill, repeats)
        cache, nxt = _cache(out), out.logits[:, -1:].argmax(-1)
        decode_s = None
        if decode_tokens:
            pos = extra.get("position_ids")
            t = time.perf_counter()
            for i in range(decode_tokens):
                step = {} if pos is None else {"position_ids": pos[..., -1:] + 1 + i}
                o = stock(input_ids=nxt, cache=cache, use_cache=True, logits_to_keep=1, **step)
                cache, nxt = _cache(o), o.logits[:, -1:].argmax(-1)
            decode_s = time.perf_counter() - t
    llm_tokens = int(c.input_ids.shape[1])
    fv, fl = flops(model, family, tower["frames"], llm_tokens)
    return {
        "frames": tower["frames"], "method": method, "retention": r, "vision_s": tower["vision_s"],
        "saliency_s": tower["saliency_s"] if uses_saliency else 0.0, "prune_s": prune_s, "prefill_s": prefill_s,
        "decode_tok_s": None if not decode_s else decode_tokens / decode_s, "peak_mem_gb": _peak_gb(device),
        "flops_vision": fv, "flops_llm": fl, "llm_tokens": llm_tokens, "tokens_kept": kept.num_kept,
    }


def check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda needs a CUDA build of torch and a GPU; this torch sees none (use --device cpu)")


def run(arch: str, frames: list[int], methods: list[str], retentions: list[float], dtype=torch.bfloat16,
        repeats: int = 2, decode_tokens: int = 8, layers: int | None = None, progress: bool = True,
        device: str = "cpu") -> list[dict]:
    """Every (frames, method, retention) on one random-weight model of ``arch``. With ``layers`` the LLM and the
    tower are cut to that depth and their times scaled per layer (``estimated``: True)."""
    from tqdm import tqdm

    if arch not in ARCHS:
        raise ValueError(f"--arch must be one of {sorted(ARCHS)}, got {arch!r}")
    check_device(device)
    vis_scale, llm_scale, vision_layers = depth_scales(arch, layers)
    model, family = build(arch, dtype, layers=layers, vision_layers=vision_layers)
    model = model.to(device)
    jobs = [(f, m, r) for f in frames for m in methods for r in ([1.0] if m == "none" else retentions)]
    rows, towers = [], {}
    with torch.inference_mode():
        for f, m, r in tqdm(jobs, desc=f"bench {arch}", disable=not progress):
            if f not in towers:  # once per frame count: the tower does the same work for every method
                towers = {f: dict(measure_tower(model, family, f, repeats, dtype), frames=f)}
            row = measure(model, family, towers[f], m, r, repeats, decode_tokens)
            rows.append(scale(row, family, vis_scale, llm_scale, arch=arch, dtype=dtype, device=device, layers=layers))
            gc.collect()
    finalize(rows)
    return rows


def depth_scales(arch: str, layers: int | None) -> tuple[float, float, int | None]:
    """(vision scale, LLM scale, vision layers to build) of a depth-reduced model (``--layers``); 1, 1, None at full
    depth."""
    _, vis, txt = ARCHS[arch]
    full_vis = vis.get("num_hidden_layers", vis.get("depth"))
    if not layers:
        return 1.0, 1.0, None
    return full_vis / min(layers, full_vis), txt["num_hidden_layers"] / layers, min(layers, full_vis)


def scale(row: dict, family: str, vis_scale: float, llm_scale: float, *, arch: str, dtype, device: str,
          layers: int | None) -> dict:
    """Times and FLOPs of a depth-reduced model scaled per layer to the full depth, and the row's labels."""
    row["vision_s"] *= vis_scale
    row["saliency_s"] *= vis_scale if family in ("qwen", "qwen3") else 1.0
    row["prefill_s"] *= llm_scale
    if row.get("decode_tok_s"):
        row["decode_tok_s"] /= llm_scale
    if layers:  # FLOPs of the full-depth model
        row["flops_vision"] *= vis_scale
        row["flops_llm"] *= llm_scale
    row.update(arch=arch, dtype=str(dtype).replace("torch.", ""), device=device, estimated=bool(layers))
    return row


def finalize(rows: list[dict]) -> None:
    """TTFT and speed-ups. ``run`` times the tower once per frame count; rows from elsewhere (e.g. JSON of an older
    run that timed it per method) get the median tower time of their frame count, so that one noisy tower run
    cannot make a method look faster than its limit."""
    for f in {r["frames"] for r in rows}:
        sub = [r for r in rows if r["frames"] == f]
        v = statistics.median(r["vision_s"] for r in sub)
        for r in sub:
            r["vision_s"] = v
            r["ttft_s"] = v + r["saliency_s"] + r["prune_s"] + r["prefill_s"]
    add_speedups(rows)


def add_speedups(rows: list[dict]) -> None:
    """speedup = TTFT(none) / TTFT(method); limit_speedup = (vision + full prefill) / (vision + this prefill)."""
    full = {r["frames"]: r for r in rows if r["method"] == "none"}
    for r in rows:
        f = full.get(r["frames"])
        if f is None:
            r["speedup"] = r["limit_speedup"] = None
            continue
        r["speedup"] = f["ttft_s"] / r["ttft_s"]
        r["limit_speedup"] = (f["vision_s"] + f["prefill_s"]) / (f["vision_s"] + r["prefill_s"])


def format_table(rows: list[dict]) -> str:
    head = (f"{'frames':>6} {'method':<10}{'r':>5}{'vision s':>10}{'salien s':>10}{'prune s':>9}{'prefill s':>10}"
            f"{'TTFT s':>9}{'speedup':>9}{'limit':>7}{'share':>7}{'dec tok/s':>10}{'peak GB':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        share = "-" if not r.get("limit_speedup") or r["limit_speedup"] <= 1.0001 else \
            f"{(r['speedup'] - 1) / (r['limit_speedup'] - 1):.0%}"
        sp = "-" if r.get("speedup") is None else f"{r['speedup']:.2f}x"
        lim = "-" if r.get("limit_speedup") is None else f"{r['limit_speedup']:.2f}x"
        dec = "-" if not r["decode_tok_s"] else f"{r['decode_tok_s']:.2f}"
        lines.append(f"{r['frames']:>6} {r['method']:<10}{r['retention']:>5g}{r['vision_s']:>10.2f}{r['saliency_s']:>10.3f}"
                     f"{r['prune_s']:>9.3f}{r['prefill_s']:>10.2f}{r['ttft_s']:>9.2f}{sp:>9}{lim:>7}{share:>7}{dec:>10}"
                     f"{r['peak_mem_gb'] or 0:>8.1f}")
    if any(r["estimated"] for r in rows):
        lines.append("ESTIMATED: depth-reduced model, times scaled per layer (--layers)")
    lines.append("share = (speedup - 1) / (limit - 1): how much of what pruning can win this method wins")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> str:
    """Per frame count, one horizontal bar per method and retention: the time each adds on top of the vision tower
    (saliency, pruning, prefill), stacked, labelled with its TTFT speed-up. The tower's own time, the same for all,
    is in the title: drawing it would flatten every difference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = sorted({r["frames"] for r in rows})
    n = max(len([r for r in rows if r["frames"] == f]) for f in frames)
    fig, axes = plt.subplots(1, len(frames), figsize=(7.5 * len(frames), 1.2 + 0.32 * n), squeeze=False)
    colours = {"saliency_s": "#f0a202", "prune_s": "#d1495b", "prefill_s": "#2e86ab"}
    for ax, f in zip(axes[0], frames):
        sub = sorted((r for r in rows if r["frames"] == f), key=lambda r: (r["method"] != "none", r["method"], r["retention"]))
        labels = ["none (all tokens)" if r["method"] == "none" else f"{r['method']} {r['retention']:g}" for r in sub]
        y = list(range(len(sub)))[::-1]
        left = [0.0] * len(sub)
        for key, col in colours.items():
            vals = [r[key] for r in sub]
            ax.barh(y, vals, left=left, color=col, label=key[:-2])
            left = [a + v for a, v in zip(left, vals)]
        for yi, r, x in zip(y, sub, left):
            if r.get("speedup"):
                ax.text(x, yi, f" {r['speedup']:.2f}x (limit {r['limit_speedup']:.2f}x)", va="center", fontsize=8)
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_xlim(0, max(left) * 1.45)
        ax.set_xlabel("seconds on top of the vision tower")
        est = ", estimated" if any(r["estimated"] for r in sub) else ""
        ax.set_title(f"{sub[0]['arch']}, {f} frames, {sub[0]['dtype']} {sub[0]['device']}{est}\n"
                     f"vision tower {sub[0]['vision_s']:.1f} s for every method; TTFT speed-up at the right", fontsize=9)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
