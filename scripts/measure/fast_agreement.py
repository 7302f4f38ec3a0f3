"""Made docs/benchmarks.md's fast-mode agreement on the golden inputs: Jaccard 0.963-1.000 against the exact mode.

Kept-set agreement (Jaccard) of similarity="fast" with the exact reference on the golden inputs.

    .venv/bin/python scripts/measure/fast_agreement.py [GOLDEN_DIR]   (default ../shared/golden)
"""
import sys
from pathlib import Path

import torch

from tango_prune import TangoConfig, VideoTokens, prune_video_tokens

golden = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[3] / "shared" / "golden")
for path in sorted(golden.glob("*.pt")):
    g = torch.load(path, weights_only=False)
    if "params" not in g:
        continue
    p, i = g["params"], g["inputs"]
    cfg = TangoConfig.release(
        retention=p["retention"], segment=p["segment_type"], segment_tau=p["segment_tau"], static_tau=p["static_tau"],
        context_ratio=p["context_ratio"], k_neighbors=p["k_neighbors"], alpha=p["alpha"], beta=p["beta"],
        base_time=p["base_time"], base_space=p["base_space"], strope_section=tuple(p["strope_section"]),
        sink_indices=tuple(p["sink_indices"]),
    )
    vt = VideoTokens(i["features"], i["saliency"], tuple(i["grid"]), i["timestamps"])
    a = set(prune_video_tokens(vt, cfg).index.tolist())
    b = set(prune_video_tokens(vt, cfg.replace(similarity="fast")).index.tolist())
    print(f"{path.name:<26} jaccard {len(a & b) / len(a | b):.3f}  ({len(a)} kept)")
