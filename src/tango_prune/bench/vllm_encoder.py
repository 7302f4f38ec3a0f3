"""Tango with and without the encoder stage through vLLM, in one engine, requests alternating.

    tango-prune bench --engine vllm --arch qwen2.5-vl-7b --encoder reuse --clips carphone,bikes --frames 16 --px 336
    python -m tango_prune.bench.vllm_encoder time CKPT SPEC.json --json OUT.json     (what it runs, in the vLLM venv)

Random weights carry no redundancy, so (as ``bench --encoder`` does through transformers) the stage follows a pattern
measured on the real ViT-S at the tower's patch grid, on each two frames of a real clip averaged (a temporal patch):
``bench.encoder.clip_fidelity`` in the main venv, saved as a raster file the plugin reads (``encoder_pattern``).
Then one vLLM engine (random weights at the real shape, Tango at the retention, the stage on) serves, per repeat:
Tango alone, the stage on clip 1, Tango alone, the stage on clip 2, ..., Tango alone. The stage is switched per
request on the model (``LLM.apply_model``: the plugin's ``_tango_encoder`` and ``_tango_encoder_pattern``), every
request a video the engine has never seen (no encoder-cache hit), one output token: its wall time is its TTFT. Each
stage request is compared with the mean of the two Tango requests around it: timings of one engine drift by more than
the stage's gain (measured through transformers: 11.6-14.3 s for the same tower).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path


def grid_side(arch: str, px: int) -> int:
    """Patches per side of one temporal patch at ``px`` x ``px`` frames (px a multiple of patch x merge)."""
    from .vllm_engine import ARCHS

    if arch not in ARCHS:
        raise ValueError(f"--arch must be one of {sorted(ARCHS)}, got {arch!r}")
    vision = ARCHS[arch][1]
    unit = vision["patch_size"] * vision["spatial_merge_size"]
    if px % unit:
        raise ValueError(f"--px must be a multiple of {unit} for {arch} (no resizing, so the pattern fits), got {px}")
    return px // vision["patch_size"]


def drive(arch: str, frames: int, px: int, clips: list[str], cfgs: list, retention: float, repeats: int,
          python: str, progress: bool = True) -> dict:
    """From the main venv: the ViT-S patterns, then one engine run in the vLLM venv. Returns rows + fidelity."""
    import subprocess
    import tempfile

    import torch
    from tqdm import tqdm

    from ..encoders import vit_s
    from .encoder import _name, clip_fidelity
    from .vllm_engine import ARCHS

    if arch not in ARCHS:
        raise ValueError(f"--arch must be one of {sorted(ARCHS)} with --engine vllm, got {arch!r}")
    if not Path(python).is_file():
        raise ValueError(f"--vllm-python {python} does not exist; build the vLLM venv with scripts/setup.sh vllm")
    side = grid_side(arch, px)
    vit, cache, spec = vit_s.load(), {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in cfgs:
            for clip in tqdm(clips, desc=f"ViT-S patterns {_name(cfg)}", disable=not progress):
                fid = clip_fidelity(vit, clip, frames, cfg, side * 14, retention, cache, pairs=True)
                path = Path(tmp) / f"pattern-{len(spec)}.pt"
                torch.save(fid.pop("pattern").cpu(), path)
                spec.append(dict(fid, label=f"+{_name(cfg)} {clip[:10]}", encoder=vars(cfg), pattern=str(path)))
        ckpt, out, spec_file = Path(tmp) / "ckpt", Path(tmp) / "rows.json", Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps({"frames": frames, "px": px, "rate": round(1.0 - retention, 6),
                                         "repeats": repeats, "stages": spec}))
        subprocess.run([python, "-m", "tango_prune.bench.vllm_engine", "build", "--arch", arch, "--out", str(ckpt),
                        "--px", str(px)], check=True, capture_output=True, text=True)
        done = subprocess.run([python, "-m", __name__, "time", str(ckpt), str(spec_file), "--json", str(out)],
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"the vLLM stage run failed:\n{done.stderr[-3000:]}")
        result = json.loads(out.read_text())
    return dict(result, arch=arch, retention=retention)


def _set_stage(model, cfg, pattern) -> None:
    """In the worker: the stage's settings for the next request (None: Tango alone). Module level: it is pickled."""
    model._tango_encoder, model._tango_encoder_pattern = cfg, pattern


def time_stage(ckpt: str, spec: dict) -> dict:
    """In the vLLM venv: one engine, Tango alone and Tango + stage per ``spec["stages"]``, alternating."""
    import numpy as np
    import torch
    from vllm import LLM, SamplingParams

    from .vllm_engine import PROMPT, engine_kwargs, video_meta

    os.environ["TANGO_PRUNE_OPTIONS"] = json.dumps({"encoder": "reuse"})
    # apply_model sends a function to the engine's worker process: vLLM refuses that unless pickling is allowed
    # (this engine is local to this process and serves nothing else)
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    # 4k context: every request is pruned (~200 prompt tokens); Qwen3-VL-8B's KV cache for 32k would not fit beside its
    # weights in 24 GB
    llm = LLM(**engine_kwargs(ckpt, "tango", spec["rate"], max_model_len=4096), gpu_memory_utilization=0.5)
    params = SamplingParams(max_tokens=1, temperature=0.0)
    rng = np.random.default_rng(0)
    frames, px = spec["frames"], spec["px"]

    def request(stage: dict | None) -> tuple[float, int]:
        from tango_prune.encoders.reuse import ReuseConfig

        cfg = None if stage is None else ReuseConfig(**stage["encoder"])
        pattern = None if stage is None else stage["pattern"]
        llm.apply_model(partial(_set_stage, cfg=cfg, pattern=pattern))
        video = rng.integers(0, 256, size=(frames, px, px, 3), dtype=np.uint8)  # new media: no encoder-cache hit
        t = time.perf_counter()
        out = llm.generate({"prompt": PROMPT, "multi_modal_data": {"video": (video, video_meta(frames))}}, params,
                           use_tqdm=False)
        return time.perf_counter() - t, len(out[0].prompt_token_ids)

    request(None), request(spec["stages"][0])  # warm-up: both paths once
    control: list[float] = []
    stage_s: dict[int, list[float]] = {i: [] for i in range(len(spec["stages"]))}
    around: dict[int, list[float]] = {i: [] for i in range(len(spec["stages"]))}
    tokens = None
    for _ in range(spec["repeats"]):
        before, tokens = request(None)
        control.append(before)
        for i, stage in enumerate(spec["stages"]):
            sec, _ = request(stage)
            after, _ = request(None)
            control.append(after)
            stage_s[i].append(sec)
            around[i].append((before + after) / 2)
            before = after
    rows = [{"label": "tango", "ttft_s": statistics.median(control), "ttft_all_s": control, "vs_tango": 1.0}]
    for i, stage in enumerate(spec["stages"]):
        ratio = statistics.median(c / s for c, s in zip(around[i], stage_s[i]))
        rows.append({**{k: v for k, v in stage.items() if k != "pattern"}, "ttft_s": statistics.median(stage_s[i]),
                     "ttft_all_s": stage_s[i], "control_s": around[i], "vs_tango": ratio})
    return {"frames": frames, "px": px, "prompt_tokens": tokens, "rows": rows, "torch_threads": torch.get_num_threads(),
            "dtype": engine_kwargs(ckpt, "tango", spec["rate"])["dtype"]}


def format_table(result: dict) -> str:
    head = f"{'':<28}{'computed':>9}{'keys':>5}{'cos p5':>8}{'jacc':>6}{'TTFT s':>8}{'vs tango':>9}"
    lines = [f"vLLM, {result['arch']}, {result['frames']} frames of {result['px']} px, {result['dtype']}, Tango at "
             f"{result['retention']:g} ({result['prompt_tokens']} prompt tokens); +tau/gate_layer/key_share clip: "
             "Tango + the encoder stage", head, "-" * len(head)]
    for r in result["rows"]:
        fid = f"{r['computed']:>9.2f}{r['key_frames']:>5}{r['cos_p5']:>8.4f}{r['jaccard']:>6.2f}" if "computed" in r \
            else f"{'-':>9}{'-':>5}{'-':>8}{'-':>6}"
        lines.append(f"{r['label']:<28}{fid}{r['ttft_s']:>8.2f}{r['vs_tango']:>8.2f}x")
    lines.append("vs tango: median over repeats of (mean TTFT of the two Tango requests around it) / (its TTFT); "
                 "computed: share of patch tokens past the gate on the real ViT-S (pairs of frames); cos p5, jacc: "
                 "the stage vs stock on ViT-S (features, Tango's kept set)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tango_prune.bench.vllm_encoder")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("time")
    t.add_argument("ckpt")
    t.add_argument("spec")
    t.add_argument("--json", required=True)
    a = p.parse_args(argv)
    result = time_stage(a.ckpt, json.loads(Path(a.spec).read_text()))
    Path(a.json).write_text(json.dumps(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
