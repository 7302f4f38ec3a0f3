"""Run the authors' release pruner from a local checkout, for side-by-side timing.

Nothing of the release ships with tango-prune: the user points at their own
clone of https://github.com/xjtupanda/Tango and its files are loaded from there.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..config import SINKS, TangoConfig
from ..core.strope import default_section
from ..types import VideoTokens


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_release(root: str | Path) -> Callable[[VideoTokens, TangoConfig], torch.Tensor]:
    """A function (vt, cfg) -> kept indices computed by the release at ``root``."""
    root = Path(root)
    need = [root / "tango" / f for f in ("pruner.py", "utils.py", "prune_config.py")] + [root / "llava/model/st_rope.py"]
    missing = [str(p) for p in need if not p.is_file()]
    if missing:
        raise ValueError(f"--release {root} is not a checkout of xjtupanda/Tango: missing {missing[0]}")
    pkg = types.ModuleType("_tango_release")
    pkg.__path__ = [str(root / "tango")]
    sys.modules["_tango_release"] = pkg
    config = _load("_tango_release.prune_config", root / "tango/prune_config.py")
    _load("_tango_release.utils", root / "tango/utils.py")
    pruner = _load("_tango_release.pruner", root / "tango/pruner.py")
    rope_mod = _load("_tango_release_st_rope", root / "llava/model/st_rope.py")

    def run(vt: VideoTokens, cfg: TangoConfig) -> torch.Tensor:
        sinks = SINKS[cfg.sink_indices] if isinstance(cfg.sink_indices, str) else cfg.sink_indices
        config.PRUNE_CONFIG["special_attn_token_list"] = list(sinks)
        config.PRUNE_CONFIG["alpha"] = cfg.alpha
        D = vt.features.shape[-1]
        section = list(cfg.strope_section or default_section(D))
        rope = rope_mod.SpatioTemporalRoPE(
            types.SimpleNamespace(base_time=cfg.base_time, base_space=cfg.base_space, strope_section=section)
        )
        feats = vt.features.clone()  # the release edits its inputs in place
        roped = rope(F.normalize(feats.float(), dim=-1), t_ids=vt.times().cpu())
        metric = feats if cfg.segment == "holitom" else feats.mean(1)
        _, kept = pruner.tango_pruner(
            feats, roped, metric, vt.saliency.clone(), cfg.segment, retain_ratio=cfg.retention,
            context_ratio=cfg.context_ratio, tau=cfg.resolved_segment_tau, beta=cfg.beta, k_neighbors=cfg.k_neighbors,
        )
        return kept

    return run
