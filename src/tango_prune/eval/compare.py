"""Run several methods on one VideoTokens and report, per method and retention, what a user compares:
kept count, time, coverage and fragmentation (definitions in ``fidelity``)."""
from __future__ import annotations

import math
import statistics
import time

from ..methods import get_method
from ..types import VideoTokens
from .fidelity import coverage, fragmentation


def compare(vt: VideoTokens, methods: list[tuple[str, str, dict]], retentions: list[float], repeats: int = 1,
            progress: bool = False, outputs: list | None = None) -> list[dict]:
    """One row per (method, retention); 'none' runs once. Seconds are the median of ``repeats`` warm calls.
    ``outputs``, when given, receives each row's Pruned in the same order (for pictures, without pruning again)."""
    from tqdm import tqdm

    # every pruner is built before any runs, so a bad option fails at once, not after minutes of work
    jobs = [(label, r, get_method(name)(retention=r, **opts))
            for label, name, opts in methods for r in ([1.0] if name == "none" else retentions)]
    rows = []
    for label, r, pruner in tqdm(jobs, desc="compare", disable=not progress):
        out = pruner(vt)  # warm-up, and the result we score
        secs = []
        for _ in range(repeats):
            t = time.perf_counter()
            pruner(vt)
            secs.append(time.perf_counter() - t)
        frag = fragmentation(out)
        if outputs is not None:
            outputs.append(out)
        rows.append({
            "method": label, "retention": r, "tokens_full": vt.num_tokens, "tokens_kept": out.num_kept,
            "seconds": statistics.median(secs), "coverage": coverage(vt, out),
            "fragmentation": None if math.isnan(frag) else frag, "segments": len(out.segments),
            "saliency": out.info.get("saliency", "-"),
        })
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'method':<22}{'retention':>9}{'kept':>8}{'share':>8}{'ms':>9}{'coverage':>10}{'fragm.':>8}{'segs':>6}  saliency"
    lines = [head, "-" * len(head)]
    for r in rows:
        frag = "-" if r["fragmentation"] is None else f"{r['fragmentation']:.2f}"
        lines.append(
            f"{r['method']:<22}{r['retention']:>9g}{r['tokens_kept']:>8}{r['tokens_kept'] / r['tokens_full']:>8.1%}"
            f"{r['seconds'] * 1e3:>9.1f}{r['coverage']:>10.3f}{frag:>8}{r['segments']:>6}  {r['saliency']}"
        )
    lines.append("coverage: mean cosine of every token to the kept token standing for it (1 = nothing lost); "
                 "fragm.: 4-connected pieces per merged cluster and frame (1 = compact; '-' = nothing merged)")
    return "\n".join(lines)
