"""Pruner micro-benchmark: median time and peak memory of prune_video_tokens per video size."""
from __future__ import annotations

import gc
import math
import statistics
import time
from pathlib import Path

import torch

from ..config import TangoConfig
from ..methods import get_method
from ..pruner import prune_video_tokens
from .synthetic import noise_video, synthetic_video

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def _rss_gb(field: str) -> float | None:
    """VmRSS / VmHWM of this process in GB (Linux); None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def _reset_peak() -> None:
    try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def time_call(fn, repeats: int) -> tuple[float, object, float | None, float | None]:
    """Warm up once, then median seconds over ``repeats``; peak RSS and its rise over the start, in GB."""
    out = fn()
    gc.collect()
    start = _rss_gb("VmRSS")
    _reset_peak()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    peak = _rss_gb("VmHWM")
    rise = None if peak is None or start is None else max(0.0, peak - start)
    return statistics.median(times), out, peak, rise


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    sa, sb = set(a.tolist()), set(b.tolist())
    return len(sa & sb) / max(1, len(sa | sb))


def run_bench(
    frames: list[int], tokens: int = 196, dim: int = 3584, dtype: str = "bf16", retention: float = 0.1,
    similarities: tuple[str, ...] = ("exact", "fast"), repeats: int = 3, release: str | None = None,
    release_max_frames: int = 256, device: str = "cpu", progress: bool = True,
    scene_frames: tuple[int, int] = (4, 24), max_segment_frames: int = 1024, methods: tuple = (),
    scene: str = "video", merge_window_frames: int | None = None,
) -> list[dict]:
    """Tango (``prune_video_tokens``) per similarity mode, the release when given, and any other registry
    ``methods`` (names, or (label, name, options) as ``resolve_methods`` gives), each on the same synthetic video
    per frame count: scenes of ``scene_frames``
    frames with a still background (``scene="video"``), a video with no static position (``scene="noise"``), or one
    long segment with no static position (``scene="moving"``, the pruner's worst input)."""
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"--tokens must be a square grid size (e.g. 196 = 14x14, 169 = 13x13), got {tokens}")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    run_release = None
    if release:
        from .release import load_release

        run_release = load_release(release)
    from tqdm.auto import tqdm

    rows = []
    bar = tqdm(total=len(frames), desc="bench-pruner", disable=not progress)
    for T in frames:
        if scene == "noise":
            vt = noise_video(T, side, dim, dtype=DTYPES[dtype])
        elif scene == "moving":
            vt = noise_video(T, side, dim, dtype=DTYPES[dtype], rank=32, noise=0.6)
        else:
            vt = synthetic_video(T, side, dim, dtype=DTYPES[dtype], scene_frames=scene_frames)
        if device != "cpu":
            vt = type(vt)(vt.features.to(device), vt.saliency.to(device), vt.grid, vt.timestamps)
        sinks = {196: "llava-ov", 169: "llava-video"}.get(tokens, ())  # the release's sinks for those grids
        base_cfg = TangoConfig(retention=retention, sink_indices=sinks, max_segment_frames=max_segment_frames,
                               merge_window_frames=merge_window_frames)
        input_gb = vt.features.numel() * vt.features.element_size() / 2**30
        ref = None
        for sim in similarities:
            cfg = base_cfg.replace(similarity=sim)
            sec, out, peak, rise = time_call(lambda vt=vt, cfg=cfg: prune_video_tokens(vt, cfg), repeats)
            ref = out if sim == "exact" else ref
            rows.append(dict(
                impl="tango-prune", similarity=sim, frames=T, tokens=tokens, dim=dim, dtype=dtype,
                seconds=sec, peak_rss_gb=peak, peak_rise_gb=rise, input_gb=input_gb, kept=out.num_kept,
                segments=len(out.segments), longest_segment=max(out.segments),
                jaccard_vs_exact=None if ref is None else jaccard(out.index, ref.index),
            ))
        for m in methods:
            label, name, opts = (m, m, {}) if isinstance(m, str) else m
            if name == "tango":  # the same sinks and segment cap as the rows above
                opts = {"sink_indices": sinks, "max_segment_frames": max_segment_frames, **opts}
            pruner = get_method(name)(retention=retention, **opts)
            sec, out, peak, rise = time_call(lambda vt=vt, p=pruner: p(vt), repeats)
            rows.append(dict(
                impl=label, similarity="-", frames=T, tokens=tokens, dim=dim, dtype=dtype, seconds=sec,
                peak_rss_gb=peak, peak_rise_gb=rise, input_gb=input_gb, kept=out.num_kept, segments=len(out.segments),
                longest_segment=max(out.segments), jaccard_vs_exact=None if ref is None else jaccard(out.index, ref.index),
            ))
        if run_release is not None and T <= release_max_frames:
            sec, kept, peak, rise = time_call(lambda vt=vt, cfg=base_cfg: run_release(vt, cfg), repeats)
            rows.append(dict(
                impl="release", similarity="exact", frames=T, tokens=tokens, dim=dim, dtype=dtype,
                seconds=sec, peak_rss_gb=peak, peak_rise_gb=rise, input_gb=input_gb, kept=int(kept.numel()),
                segments=None, longest_segment=None,
                jaccard_vs_exact=None if ref is None else jaccard(kept, ref.index),
            ))
        del vt
        gc.collect()
        bar.update(1)
    bar.close()
    return rows


def format_table(rows: list[dict]) -> str:
    release = {r["frames"]: r["seconds"] for r in rows if r["impl"] == "release"}
    w = max([12] + [len(r["impl"]) + 1 for r in rows])  # labels with options (tango:brief_frames=1) run long
    head = f"{'impl':<{w}}{'similarity':<11}{'frames':>7}{'median s':>10}{'vs release':>11}{'peak GB':>9}{'rise GB':>9}"
    head += f"{'input GB':>9}"
    head += f"{'kept':>8}{'jacc':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        speed = release.get(r["frames"])
        vs = f"{speed / r['seconds']:.2f}x" if speed and r["impl"] != "release" else "-"
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        lines.append(
            f"{r['impl']:<{w}}{r['similarity']:<11}{r['frames']:>7}{r['seconds']:>10.3f}{vs:>11}"
            f"{fmt(r['peak_rss_gb'], '.2f'):>9}{fmt(r['peak_rise_gb'], '.2f'):>9}{r['input_gb']:>9.2f}{r['kept']:>8}"
            f"{fmt(r['jaccard_vs_exact'], '.3f'):>7}"
        )
    return "\n".join(lines)
