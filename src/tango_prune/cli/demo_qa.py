"""The demo's question: the trained testbed Video LLM answers about a real clip with all tokens and with Tango.

The clip gets one of the testbed's composited objects (a shape that appears, moves or blinks; its ground truth is
known), the model answers with all 1024 video tokens and with the method at the given ratio, and we print both
answers, token counts and time to first token (tower + pruning + prefill), then draw the kept tokens.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch


def question_on(path: Path, qtype: str, seed: int):
    from ..testbed.data import Backgrounds, make_sample

    return make_sample(np.random.default_rng([seed, 0]), Backgrounds([path]), qtype)


def answer_both(sample, method: str, retention: float) -> dict:
    """Answers, counts and TTFT with all tokens and with ``method``; the pruned output for the picture."""
    from ..methods import get_method
    from ..models import apply
    from ..testbed.model import load
    from ..testbed.prompt import answer, inputs as testbed_inputs
    from ..testbed.variants import V1

    model, _ = load(V1)
    inputs = testbed_inputs(V1, sample, model.dtype)
    rows = {}
    with torch.no_grad():
        for name, r in (("none", 1.0), (method, retention)):
            with apply(model, method=name, retention=r, positions=V1.positions) as h:
                model(**inputs)  # warm-up: first calls pay one-off allocation costs
                t = time.perf_counter()
                k = answer(V1, model(**inputs).logits)
                rows[name] = {"answer": k, "ttft_s": time.perf_counter() - t, **h.last_stats[0]}
            if name != "none":
                with apply(model, method="none", retention=1.0) as h0:
                    vt = h0.encode_videos(**inputs)[0]
                rows[name]["pruned"] = get_method(name)(retention=r)(vt)
                rows[name]["grid"] = vt.grid
    return rows


def run(path: Path, qtype: str, seed: int, method: str, retention: float, output: Path) -> int:
    from ..viz import draw_kept

    s = question_on(path, qtype, seed)
    letters = "ABCD"
    print(f"question about {path.name} (16 frames, with a composited object; truth known): {s.question}")
    print("  " + "  ".join(f"({letters[i]}) {o}" for i, o in enumerate(s.options)) + f"   truth: ({letters[s.answer]})")
    rows = answer_both(s, method, retention)
    for name, r in rows.items():
        ok = "right" if r["answer"] == s.answer else "wrong"
        label = "all tokens" if name == "none" else f"{name} @ {retention:g}"
        print(f"  {label:<14} answer ({letters[r['answer']]}) {s.options[r['answer']]:<12} [{ok}]  "
              f"{r['tokens_kept']:>4} of {r['tokens_full']} video tokens  time to first token {r['ttft_s']:.2f} s")
    p = rows[method]
    full = rows["none"]
    print(f"  -> {method} keeps {p['tokens_kept'] / p['tokens_full']:.0%} of the video tokens; TTFT "
          f"{full['ttft_s'] / p['ttft_s']:.2f}x faster here (the tower, same for both, dominates this small model)")
    title = (f"{method} @ {retention:g}: {p['tokens_kept']} of {p['tokens_full']} tokens "
             f"({p['grid'][1]}x{p['grid'][2]} per frame); Q: {s.question}")
    print(f"picture: {draw_kept(s.frames, p['pruned'], output, title, s.timestamps).resolve()}")
    return 0
