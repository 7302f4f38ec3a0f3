"""``TANGO_PRUNE_DEBUG_DIR``: save each pruned video's inputs and output there, one file per video (what the engine
tests compare with our pruner run outside vLLM; also for a user's bug report)."""
from __future__ import annotations

import itertools
import os

import torch

from ...types import Pruned, VideoTokens

DEBUG_DIR_VAR = "TANGO_PRUNE_DEBUG_DIR"
_dump_counter = itertools.count()


def dump(vt: VideoTokens, out: Pruned, source: str, retention: float) -> None:
    folder = os.environ.get(DEBUG_DIR_VAR)
    if not folder:
        return
    os.makedirs(folder, exist_ok=True)
    record = {
        "features": vt.features.detach().cpu(), "saliency": None if vt.saliency is None else vt.saliency.cpu(),
        "grid": vt.grid, "timestamps": None if vt.timestamps is None else vt.timestamps.cpu(),
        "index": out.index.cpu(), "kept_features": out.features.detach().cpu(), "merged": out.merged.cpu(),
        "saliency_source": source, "retention": retention,
    }
    torch.save(record, os.path.join(folder, f"{os.getpid()}-{next(_dump_counter):05d}.pt"))

