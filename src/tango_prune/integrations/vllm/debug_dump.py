"""``TANGO_PRUNE_DEBUG_DIR``: save each pruned video's inputs and output there, one file per video (what the engine
tests compare with our pruner run outside vLLM; also for a user's bug report)."""
from __future__ import annotations

import itertools
import os

import torch

from ...types import Pruned, VideoTokens

DEBUG_DIR_VAR = "TANGO_PRUNE_DEBUG_DIR"
_dump_counter = itertools.count()


def debug_dir() -> str | None:
    return os.environ.get(DEBUG_DIR_VAR) or None


def dump(vt: VideoTokens, out: Pruned, source: str, retention: float, chunks: list[int] | None = None) -> None:
    """``chunks``: the frames of each chunk the video was pruned in (chunk_frames), None when pruned whole."""
    folder = debug_dir()
    if not folder:
        return
    os.makedirs(folder, exist_ok=True)
    record = {"chunks": chunks,
        "features": vt.features.detach().cpu(), "saliency": None if vt.saliency is None else vt.saliency.cpu(),
        "grid": vt.grid, "timestamps": None if vt.timestamps is None else vt.timestamps.cpu(),
        "index": out.index.cpu(), "kept_features": out.features.detach().cpu(), "merged": out.merged.cpu(),
        "saliency_source": source, "retention": retention,
    }
    torch.save(record, os.path.join(folder, f"{os.getpid()}-{next(_dump_counter):05d}.pt"))



def dump_chunks(chunks: list[VideoTokens], out: Pruned, source: str, retention: float) -> None:
    """A video pruned chunk by chunk: recorded as one video (the chunks' rows joined) with its chunk sizes."""
    def cat(xs):
        return None if any(x is None for x in xs) else torch.cat(xs)

    grid = (sum(c.grid[0] for c in chunks), *chunks[0].grid[1:])
    vt = VideoTokens(cat([c.features for c in chunks]), cat([c.saliency for c in chunks]), grid,
                     cat([c.timestamps for c in chunks]))
    dump(vt, out, source, retention, chunks=[c.grid[0] for c in chunks])
