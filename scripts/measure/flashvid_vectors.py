"""Made tests/data/flashvid_vectors.pt: FlashVID's release on fixed inputs, which tests/test_method_flashvid.py matches.

    git clone https://github.com/Fanziyang-v/FlashVID /tmp/FlashVID     # any checkout of the authors' release
    python scripts/measure/flashvid_vectors.py --release /tmp/FlashVID --out tests/data/flashvid_vectors.pt

Runs the release's own vision-side compression, flashvid/utils.py ``flashvid_compression`` (DySeg, ADTS, TSTM),
and its ``segment``. Their package __init__ patches transformers/LLaVA model classes, so we import the three
pure-torch modules (utils, token_selection, configuration_flashvid) under a stand-in package without running it.
The release adds rand * 1e-6 to DPC densities; ``torch.rand_like`` is zeroed during the call so that the output
is deterministic (our port has no noise). Inputs are stored in float16 and run as their float32 upcast.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import types
from pathlib import Path
from unittest import mock

import torch

# name, frames per scene, rows, cols, channels, noise, retention, alpha, temporal threshold, selection,
# min segments, segment threshold
CASES = [
    ("v2_two_scenes", [3, 5], 6, 6, 24, 0.3, 0.1, 0.7, 0.8, "attn_div_v2", 2, 0.9),
    ("v1_two_scenes", [3, 5], 6, 6, 24, 0.3, 0.25, 0.7, 0.8, "attn_div", 2, 0.9),
    ("v2_three_scenes", [4, 4, 4], 5, 5, 16, 0.3, 0.2, 0.7, 0.8, "attn_div_v2", 3, 0.9),
    ("v2_still_soft_threshold", [10], 6, 6, 24, 0.02, 0.15, 0.5, 0.6, "attn_div_v2", 1, 0.5),
    ("v1_wide_frames", [2, 4], 4, 8, 24, 0.3, 0.3, 0.7, 0.9, "attn_div", 2, 0.9),
    ("alpha0_merging_only", [3, 3, 3], 6, 6, 32, 0.3, 0.1, 0.0, 0.8, "attn_div_v2", 3, 0.9),
    ("v2_half", [4, 4], 6, 6, 24, 0.3, 0.5, 0.7, 0.8, "attn_div_v2", 2, 0.9),
    ("v2_complementary_cuts", [9], 4, 4, 16, 0.3, 0.25, 0.7, 0.8, "attn_div_v2", 2, 0.9),
]


def release_modules(root: Path):
    """flashvid.utils and flashvid.configuration_flashvid from a checkout, without flashvid/__init__.py."""
    pkg = types.ModuleType("flashvid")
    pkg.__path__ = [str(root / "flashvid")]
    sys.modules["flashvid"] = pkg
    return importlib.import_module("flashvid.utils"), importlib.import_module("flashvid.configuration_flashvid")


def scenes(lengths, H, W, D, noise, seed):
    """Frames of a scene share a base plus noise; a constant offset keeps v2's relevance positive."""
    g = torch.Generator().manual_seed(seed)
    L = H * W
    parts = [torch.randn(1, L, D, generator=g) + noise * torch.randn(n, L, D, generator=g) for n in lengths]
    x = torch.cat(parts) + 1.0
    return x.half(), torch.rand(x.shape[0], L, generator=g).half()


def run(utils, config_mod, x, sal, r, alpha, thr, sel, c, tau):
    cfg = config_mod.FlashVidConfig(retention_ratio=r, alpha=alpha, token_selection_method=sel, temporal_threshold=thr,
                                    do_segment=True, segment_threshold=tau, min_segment_num=c,
                                    complementary_segment=True, expansion=1.0)
    with mock.patch.object(torch, "rand_like", lambda t, **kw: torch.zeros_like(t)):
        tokens, index = utils.flashvid_compression(x.float().clone(), sal.float(), cfg)
    seg = utils.segment(x.float().mean(1), tau, c, True)
    return tokens, index, [int(s) for s in seg if s > 0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--release", required=True, help="path of a FlashVID checkout (holds flashvid/utils.py)")
    p.add_argument("--out", default="tests/data/flashvid_vectors.pt")
    a = p.parse_args()
    utils, config_mod = release_modules(Path(a.release))
    out = []
    for i, (name, lengths, H, W, D, noise, r, alpha, thr, sel, c, tau) in enumerate(CASES):
        x, sal = scenes(lengths, H, W, D, noise, seed=i)
        tokens, index, seg = run(utils, config_mod, x, sal, r, alpha, thr, sel, c, tau)
        assert min(seg) > 1, f"{name}: a one-frame segment ({seg}) is where we depart from the release; change it"
        assert index.unique().numel() == index.numel(), f"{name}: the release repeated an index"
        opts = dict(alpha=alpha, temporal_threshold=thr, selection=sel, min_segments=c, segment_threshold=tau,
                    budget="release")
        out.append({"name": name, "features": x, "saliency": sal, "grid": (x.shape[0], H, W), "retention": r,
                    "options": opts, "index": index.to(torch.int32), "tokens": tokens.float(), "segments": seg})
        print(f"{name}: T={x.shape[0]} L={H * W} kept {index.numel()} segments {seg}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"release": str(a.release), "cases": out}, a.out)
    print(f"{len(out)} cases -> {a.out} ({Path(a.out).stat().st_size} bytes)")


if __name__ == "__main__":
    main()
