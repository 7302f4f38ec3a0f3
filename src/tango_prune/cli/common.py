"""What every tango-prune command shares: one-line usage errors (exit code 2), argument types, token files."""
from __future__ import annotations

import argparse
import math
from pathlib import Path


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit code 2, not a usage dump
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def ints_arg(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def retention_arg(text: str) -> float:
    try:
        r = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"retention must be a number in (0, 1], got {text!r}") from None
    if not 0.0 < r <= 1.0:
        raise argparse.ArgumentTypeError(f"retention must be in (0, 1], got {text}")
    return r


def parse_dtype(name: str, device: str):
    """--dtype (auto: hardware.default_dtype(device)) -> torch.dtype."""
    from ..hardware import resolve_dtype

    try:
        return resolve_dtype(name, device)
    except RuntimeError as e:  # a device string torch cannot parse
        raise UsageError(f"--device: {e}") from None


def retentions_arg(text: str) -> list[float]:
    return [retention_arg(v) for v in text.split(",") if v.strip()]


def load_tokens(path: str):
    """VideoTokens from a torch file holding a dict with features (T, L, D) and optional saliency, grid, timestamps."""
    import torch

    from ..types import VideoTokens

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"no such file: {path}")
    try:
        d = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # a corrupt or foreign file: say so in one line
        raise UsageError(f"cannot read {path} as a torch file: {e.__class__.__name__}") from None
    if isinstance(d, dict) and "inputs" in d:  # the golden vectors' layout
        d = d["inputs"]
    if not isinstance(d, dict) or "features" not in d:
        raise UsageError(f"{path} must hold a dict with 'features' (T, L, D) and optional 'saliency', 'grid', 'timestamps'")
    f = d["features"]
    grid = d.get("grid")
    if grid is None:
        side = math.isqrt(f.shape[1]) if f.dim() == 3 else 0
        if side * side != f.shape[1]:
            raise UsageError(f"{path}: L={f.shape[1]} is not square; store 'grid' = (T, H, W) in the file")
        grid = (f.shape[0], side, side)
    return VideoTokens(f, d.get("saliency"), tuple(grid), d.get("timestamps"))
