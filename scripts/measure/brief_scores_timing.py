"""Side-by-side timing of core.events.brief_scores against an older copy of core/events.py (the lag-1 cosines
taken from consecutive_similarity instead of recomputed), on random bf16 features at LLaVA-OV-7B's shape,
interleaved repeats, medians.

    git show 27540ce:src/tango_prune/core/events.py > /tmp/events_old.py
    .venv/bin/python scripts/measure/brief_scores_timing.py --old /tmp/events_old.py [--frames 64] [--span 1]
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import torch

from tango_prune.core import events
from tango_prune.core.segment import consecutive_similarity


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", required=True)
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--span", type=int, default=1)
    p.add_argument("--repeats", type=int, default=9)
    a = p.parse_args()
    spec = importlib.util.spec_from_file_location("events_old", a.old)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    x = torch.randn(a.frames, 196, 3584, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    tok_sim, _ = consecutive_similarity(x)  # Tango has it already when brief_scores runs
    runs = {"old": lambda: old.brief_scores(x, a.span), "new": lambda: events.brief_scores(x, a.span, tok_sim)}
    times = {k: [] for k in runs}
    for f in runs.values():
        f()  # warm-up
    for _ in range(a.repeats):
        for k, f in runs.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    for k, v in times.items():
        print(f"{k}: median {statistics.median(v) * 1000:.1f} ms over {a.repeats} ({a.frames} x 196 x 3584 bf16, span {a.span})")


if __name__ == "__main__":
    main()
