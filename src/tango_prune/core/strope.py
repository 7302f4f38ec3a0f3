"""ST-RoPE: rotate token features by their (time, row, column) before measuring distances.

RoPE makes the dot product of two rotated vectors depend on their relative
position, so tokens far apart in space or time look less alike: a locality prior
that keeps clusters compact. Used only for similarity, never fed to the LLM.
"""
from __future__ import annotations

import torch
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


def _tables(coord: Tensor, dim: int, base: float) -> tuple[Tensor, Tensor]:
    ang = torch.outer(coord.float(), inv_freq(dim, base, coord.device))
    return ang.cos(), ang.sin()


def _rotate_group(x: Tensor, out: Tensor, cos: Tensor, sin: Tensor) -> None:
    """Write the rotate-half RoPE rotation of channel group x (..., d) into out; cos/sin broadcast to (..., d/2)."""
    h = x.shape[-1] // 2
    if h == 0:
        return
    x1, x2 = x[..., :h], x[..., h:]
    o1, o2 = out[..., :h], out[..., h:]
    torch.mul(x1, cos, out=o1)
    o1.addcmul_(x2, sin, value=-1.0)
    torch.mul(x2, cos, out=o2)
    o2.addcmul_(x1, sin)


def strope(
    x: Tensor,
    times: Tensor,
    rows: Tensor,
    cols: Tensor,
    section: tuple[int, int, int],
    base_time: float = 10000.0,
    base_space: float = 1000.0,
    out_dtype: torch.dtype = torch.float32,
    *,
    scale: Tensor | None = None,
    select: Tensor | None = None,
) -> Tensor:
    """Rotate x (T, P, D) by coordinates (times[t], rows[p], cols[p]) -> ``out_dtype``.

    Any subset of a frame's positions may be rotated: ``select`` (P,) picks them
    from x (T, L, D) frame by frame, without copying the rest. ``scale`` (T, P)
    multiplies each token first (normalisation in the same pass). Works one frame
    at a time: small temporaries stay in cache and are reused instead of
    faulting in fresh pages.
    """
    T, _, D = x.shape
    P = x.shape[1] if select is None else select.shape[0]
    if sum(section) != D:
        raise ValueError(f"strope_section {section} does not sum to D={D}")
    if times.shape != (T,) or rows.shape != (P,) or cols.shape != (P,):
        raise ValueError(f"need times ({T},), rows and cols ({P},); got {tuple(times.shape)}, {tuple(rows.shape)}, {tuple(cols.shape)}")
    dev = x.device
    out = torch.empty(T, P, D, dtype=out_dtype, device=dev)
    dt, dh, dw = section
    ct, st = _tables(times.to(dev), dt, base_time)
    ch, sh = _tables(rows.to(dev), dh, base_space)
    cw, sw = _tables(cols.to(dev), dw, base_space)
    for t in range(T):
        xt = x[t] if select is None else x[t].index_select(0, select)
        xt = xt.float() if scale is None else xt * scale[t].unsqueeze(-1)
        ot = out[t] if out_dtype == torch.float32 else torch.empty(P, D, device=dev)
        _rotate_group(xt[:, :dt], ot[:, :dt], ct[t], st[t])
        _rotate_group(xt[:, dt : dt + dh], ot[:, dt : dt + dh], ch, sh)
        _rotate_group(xt[:, dt + dh :], ot[:, dt + dh :], cw, sw)
        if ot.data_ptr() != out[t].data_ptr():
            out[t] = ot
    return out


def grid_coords(width: int, positions: Tensor) -> tuple[Tensor, Tensor]:
    """(rows, cols) of flat positions within a frame of the given width."""
    rows = torch.div(positions, width, rounding_mode="floor")
    return rows, positions - rows * width


def rotated_unit_features(
    features: Tensor,
    width: int,
    times: Tensor,
    section: tuple[int, int, int] | None,
    base_time: float = 10000.0,
    base_space: float = 1000.0,
    *,
    positions: Tensor | None = None,
    select: bool = False,
    rotate: bool = True,
    norms: Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """L2-normalise features (T, P, D) and rotate them by ST-RoPE -> (T, P, D) in ``out_dtype``.

    ``positions`` (P,) are the tokens' flat positions in a frame of ``width``
    columns (default: all of them, 0..P-1); with ``select=True`` features is the
    whole (T, L, D) and only those positions are read. ``norms`` (T, P), when the caller
    already has them, saves a reduction. ``rotate=False`` gives the plain unit
    vectors (the ablation's cosine geometry). Rows stay unit norm either way.
    """
    if positions is None:
        positions = torch.arange(features.shape[1], device=features.device)
    if select and (norms is None or not rotate):
        features, select = features[:, positions], False  # paths that need the gathered copy anyway
    if norms is None:
        norms = torch.linalg.vector_norm(features.float(), dim=-1)
    scale = 1.0 / norms.clamp_min(1e-12)
    if not rotate:
        return (features * scale.unsqueeze(-1)).to(out_dtype)
    sec = resolve_section(features.shape[-1], section)
    rows, cols = grid_coords(width, positions)
    return strope(
        features, times, rows, cols, sec, base_time, base_space, out_dtype,
        scale=scale, select=positions if select else None,
    )
