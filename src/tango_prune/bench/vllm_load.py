"""vLLM under load: requests/s and time to first token at several concurrencies, with and without pruning.

Runs in the vLLM venv; ``tango-prune bench --engine vllm --concurrency 1,4,8`` drives it from the main venv:

    tango-prune bench --engine vllm --arch qwen2.5-vl-3b --frames 8 --methods tango --retention 0.1 --concurrency 1,4,8
    python -m tango_prune.bench.vllm_load DIR --method tango --rate 0.9 --frames 8 --concurrency 1,4,8 --json F

One engine per method (vLLM's ``AsyncLLM``, in-process, ``max_num_seqs`` = the largest concurrency, random weights
from ``load_format="dummy"``). At concurrency c, ``c * rounds`` requests are kept c in flight (a closed loop: a new
one starts when one ends), each a video the engine has never seen (the encoder cache keys by media hash) and 8
generated tokens. TTFT is the time from a request's submission to its first token, so it includes waiting for the
others; requests/s is the requests finished over the wall time of the level. One warm-up request first.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

from .vllm_engine import PROMPT, engine_kwargs, video_meta

MAX_TOKENS = 8


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


async def _levels(engine, concurrency: list[int], rounds: int, frames: int, px: int, seed: int) -> list[dict]:
    import numpy as np
    from vllm import SamplingParams

    rng = np.random.default_rng(seed)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    meta = video_meta(frames)
    counter = iter(range(10**9))

    async def one() -> tuple[float, int]:
        video = rng.integers(0, 256, size=(frames, px, px, 3), dtype=np.uint8)  # new media each time
        t0, first, n_prompt = time.perf_counter(), None, 0
        async for out in engine.generate({"prompt": PROMPT, "multi_modal_data": {"video": (video, meta)}}, params,
                                         request_id=f"r{next(counter)}"):
            if first is None and out.outputs and out.outputs[0].token_ids:
                first = time.perf_counter() - t0
            n_prompt = len(out.prompt_token_ids or [])
        return first if first is not None else time.perf_counter() - t0, n_prompt

    await one()  # warm-up
    rows = []
    for c in concurrency:
        total = c * rounds
        todo = iter(range(total))
        ttfts: list[float] = []
        prompts: list[int] = []

        async def worker(todo=todo, ttfts=ttfts, prompts=prompts):  # this level's, bound now
            for _ in todo:
                t, n = await one()
                ttfts.append(t)
                prompts.append(n)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(c)))
        wall = time.perf_counter() - t0
        rows.append({"concurrency": c, "requests": total, "wall_s": wall, "requests_per_s": total / wall,
                     "ttft_p50_s": statistics.median(ttfts), "ttft_p95_s": _percentile(ttfts, 0.95),
                     "prompt_tokens": prompts[0]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def run(ckpt: str, method: str | None, rate: float, frames: int, px: int, concurrency: list[int], rounds: int,
        max_model_len: int = 32768) -> dict:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    args = AsyncEngineArgs(**engine_kwargs(ckpt, method, rate, max_model_len), max_num_seqs=max(concurrency),
                           disable_log_stats=True)
    engine = AsyncLLM.from_engine_args(args)
    try:
        rows = asyncio.run(_levels(engine, concurrency, rounds, frames, px, seed=0))
    finally:
        engine.shutdown()
        del engine  # now, not at interpreter exit (its __del__ shuts down again and fails once modules are gone)
    return {"method": method or "none", "retention": 1.0 - rate if method else 1.0, "frames": frames, "px": px,
            "levels": rows}


def drive(arch: str, frames: int, methods: list[str], retention: float, concurrency: list[int], rounds: int,
          px: int, python: str, progress: bool = True) -> list[dict]:
    """From the main venv: one vLLM process for stock vLLM, then one per method."""
    import subprocess
    import tempfile

    from tqdm import tqdm

    if not Path(python).is_file():
        raise ValueError(f"--vllm-python {python} does not exist; build the vLLM venv with scripts/setup.sh vllm")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ckpt"
        subprocess.run([python, "-m", "tango_prune.bench.vllm_engine", "build", "--arch", arch, "--out", str(ckpt),
                        "--px", str(px)], check=True, capture_output=True, text=True)
        for m in tqdm(["none", *[m for m in methods if m != "none"]], desc=f"load {arch}", disable=not progress):
            out = Path(tmp) / "load.json"
            cmd = [python, "-m", __name__, str(ckpt), "--rate", str(round(1.0 - retention, 6)), "--frames",
                   str(frames), "--px", str(px), "--concurrency", ",".join(map(str, concurrency)), "--rounds",
                   str(rounds), "--json", str(out)] + ([] if m == "none" else ["--method", m])
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"vLLM load run {m} failed:\n{done.stderr[-3000:]}")
            results.append(dict(json.loads(out.read_text()), arch=arch))
    return results


def format_load(results: list[dict]) -> str:
    base = {lv["concurrency"]: lv for lv in results[0]["levels"]}
    lines = ["| method | r | concurrency | prompt tokens | requests/s | vs none | TTFT p50 s | TTFT p95 s |",
             "|" + "---|" * 8]
    for res in results:
        for lv in res["levels"]:
            ratio = lv["requests_per_s"] / base[lv["concurrency"]]["requests_per_s"]
            lines.append(f"| {res['method']} | {res['retention']:g} | {lv['concurrency']} | {lv['prompt_tokens']} | "
                         f"{lv['requests_per_s']:.3f} | {ratio:.2f}x | {lv['ttft_p50_s']:.2f} | {lv['ttft_p95_s']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tango_prune.bench.vllm_load")
    p.add_argument("ckpt")
    p.add_argument("--method", help="registry name; omit for stock vLLM (no pruning)")
    p.add_argument("--rate", type=float, default=0.9)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--px", type=int, default=336)
    p.add_argument("--concurrency", default="1,4,8")
    p.add_argument("--rounds", type=int, default=2, help="requests per level = concurrency x rounds")
    p.add_argument("--max-model-len", type=int, default=32768)
    p.add_argument("--json", required=True)
    a = p.parse_args(argv)
    res = run(a.ckpt, a.method, a.rate, a.frames, a.px, [int(c) for c in a.concurrency.split(",")], a.rounds,
              a.max_model_len)
    Path(a.json).write_text(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
