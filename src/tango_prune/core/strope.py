"""ST-RoPE: rotate token features by their (time, row, column) before measuring distances.

RoPE makes the dot product of two rotated vectors depend on their relative
position, so tokens far apart in space or time look less alike: a locality prior
that keeps clusters compact. Used only for similarity, never fed to the LLM.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def default_section(dim: int) -> tuple[int, int, int]:
    """Three near-equal even channel groups (t, h, w), time first, summing to ``dim``.

    3584 -> (1196, 1194, 1194); 96 -> (32, 32, 32).
    """
    space = 2 * (dim // 6)
    t = dim - 2 * space
    if t % 2:
        raise ValueError(
            f"ST-RoPE needs an even feature dimension, got D={dim}; pass strope=False (plain cosine geometry)"
        )
    return (t, space, space)


def resolve_section(dim: int, section: tuple[int, int, int] | None) -> tuple[int, int, int]:
    if section is None:
        return default_section(dim)
    section = tuple(int(s) for s in section)
    if len(section) != 3 or any(s < 0 or s % 2 for s in section):
        raise ValueError(f"strope_section must be three even non-negative ints, got {section}")
    if sum(section) != dim:
        raise ValueError(
            f"strope_section {section} sums to {sum(section)} but the feature dimension is {dim}; "
            f"use strope_section=None to split {dim} automatically"
        )
    return section


def inv_freq(dim: int, base: float, device=None) -> Tensor:
    """RoPE frequencies base^(-2i/dim) for the dim/2 channel pairs (float32, as the release)."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))


def _rotate_group(x: Tensor, coord: Tensor, base: float, shape: tuple[int, ...]) -> Tensor:
    """Rotate channel group ``x`` (..., d) by angle coord * inv_freq, rotate-half pairing.

    ``coord`` holds one coordinate per index of one axis; ``shape`` is the view that
    broadcasts the (n, d/2) tables against x, so no (tokens, d) table is built.
    """
    d = x.shape[-1]
    if d == 0:
        return x
    ang = torch.outer(coord.float(), inv_freq(d, base, x.device))
    cos, sin = ang.cos().view(*shape, d // 2), ang.sin().view(*shape, d // 2)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def strope(
    x: Tensor,
    times: Tensor,
    section: tuple[int, int, int],
    base_time: float = 10000.0,
    base_space: float = 1000.0,
) -> Tensor:
    """Rotate x (T, H, W, D) by its coordinates (times[t], h, w). Computes in float32."""
    T, H, W, D = x.shape
    if sum(section) != D:
        raise ValueError(f"strope_section {section} does not sum to D={D}")
    if times.shape != (T,):
        raise ValueError(f"times must have shape ({T},), got {tuple(times.shape)}")
    x = x.float()
    xt, xh, xw = torch.split(x, list(section), dim=-1)
    dev = x.device
    return torch.cat(
        (
            _rotate_group(xt, times.to(dev), base_time, (T, 1, 1)),
            _rotate_group(xh, torch.arange(H, device=dev), base_space, (1, H, 1)),
            _rotate_group(xw, torch.arange(W, device=dev), base_space, (1, 1, W)),
        ),
        dim=-1,
    )


def rotated_unit_features(
    features: Tensor,
    grid_hw: tuple[int, int],
    times: Tensor,
    section: tuple[int, int, int] | None,
    base_time: float = 10000.0,
    base_space: float = 1000.0,
    *,
    rotate: bool = True,
    out_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """L2-normalise features (T, L, D) and rotate them by ST-RoPE -> (T, L, D) in ``out_dtype``.

    With ``rotate=False`` the result is the plain unit vectors (the ablation's
    cosine geometry). Rows stay unit norm either way, so distances are
    sqrt(2 - 2 cos).
    """
    T, L, D = features.shape
    H, W = grid_hw
    unit = F.normalize(features.float(), dim=-1)
    if not rotate:
        return unit.to(out_dtype)
    sec = resolve_section(D, section)
    return strope(unit.view(T, H, W, D), times, sec, base_time, base_space).view(T, L, D).to(out_dtype)
