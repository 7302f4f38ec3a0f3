"""Pictures of what a pruner kept: frames with kept tokens outlined and merged clusters tinted."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from torch import Tensor

from .types import Pruned


def token_overlay(frames: np.ndarray, out: Pruned, patch: tuple[int, int]) -> np.ndarray:
    """(T, H*ph, W*pw, 3) float images: kept tokens at full brightness with a white outline, tokens
    merged into a kept token tinted with that token's colour, tokens dropped outright darkened."""
    from matplotlib import colormaps

    T, H, W = out.grid
    ph, pw = patch
    img = frames.astype(np.float32) / 255.0
    a = out.assignment.reshape(T, H, W).cpu().numpy()
    kept = np.zeros(T * H * W, dtype=bool)
    kept[out.index.cpu().numpy()] = True
    kept = kept.reshape(T, H, W)
    size = np.bincount(a[a >= 0], minlength=out.num_kept)
    clustered = (a >= 0) & (size[np.maximum(a, 0)] >= 2)
    palette = colormaps["tab20"](np.arange(20))[:, :3].astype(np.float32)
    colour = palette[np.maximum(a, 0) % 20]  # (T, H, W, 3)

    def up(x: np.ndarray) -> np.ndarray:  # patch grid -> pixels
        return np.repeat(np.repeat(x, ph, axis=1), pw, axis=2)

    tint = up(np.where(clustered[..., None], colour, 0.0))
    shade = up(np.where(kept, 1.0, np.where(clustered, 0.55, 0.2))[..., None])
    res = img * shade + 0.45 * tint * up(clustered[..., None] & ~kept[..., None])
    yy = np.arange(H * ph) % ph
    xx = np.arange(W * pw) % pw
    edge = (yy[:, None] == 0) | (yy[:, None] == ph - 1) | (xx[None, :] == 0) | (xx[None, :] == pw - 1)
    res = np.where((up(kept) & edge[None])[..., None], 1.0, res)
    return np.clip(res, 0.0, 1.0)


def _frames_for(frames: Tensor | np.ndarray, grid: tuple[int, int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """The frames as a numpy array and the pixel size of one token, checked against the token grid."""
    fr = frames.cpu().numpy() if isinstance(frames, Tensor) else np.asarray(frames)
    T, H, W = grid
    if fr.shape[0] != T or fr.shape[1] % H or fr.shape[2] % W:
        raise ValueError(f"frames {fr.shape} do not tile the token grid {grid}; pass the frames the tokens came from")
    return fr, (fr.shape[1] // H, fr.shape[2] // W)


def draw_kept(
    frames: Tensor | np.ndarray,
    out: Pruned,
    path: str | Path,
    title: str = "",
    timestamps: Tensor | None = None,
    max_frames: int = 16,
) -> Path:
    """Write a PNG grid of (up to ``max_frames``) frames showing what ``out`` kept.

    ``frames`` are the (T, H*ph, W*pw, 3) uint8 images the tokens were cut from.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fr, patch = _frames_for(frames, out.grid)
    T = out.grid[0]
    img = token_overlay(fr, out, patch)
    show = np.unique(np.linspace(0, T - 1, min(T, max_frames)).round().astype(int))
    cols = min(4, len(show))
    rows = math.ceil(len(show) / cols)
    aspect = img.shape[2] / img.shape[1]
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * aspect * cols, 3.2 * rows + 0.9), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, t in zip(axes.flat, show):
        ax.imshow(img[t], interpolation="nearest")
        when = f"t={float(timestamps[t]):.1f}s" if timestamps is not None else f"frame {t}"
        ax.set_title(f"{when}: {int((out.positions[:, 0] == t).sum())} kept", fontsize=9)
    return _save(fig, title, path)



def draw_compare(frames: Tensor | np.ndarray, results: list[tuple[str, Pruned]], path: str | Path, title: str = "",
                 timestamps: Tensor | None = None, max_frames: int = 4) -> Path:
    """One row per method, the same sampled frames in every row, so what each method kept can be compared."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("results is empty; pass at least one (label, Pruned)")
    fr, patch = _frames_for(frames, results[0][1].grid)
    T = fr.shape[0]
    show = np.unique(np.linspace(0, T - 1, min(T, max_frames)).round().astype(int))
    aspect = fr.shape[2] / fr.shape[1]
    fig, axes = plt.subplots(len(results), len(show), figsize=(2.6 * aspect * len(show), 2.6 * len(results) + 0.8),
                             squeeze=False)
    for row, (label, out) in zip(axes, results):
        img = token_overlay(fr, out, patch)
        for ax, t in zip(row, show):
            ax.imshow(img[t], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            when = f"t={float(timestamps[t]):.1f}s" if timestamps is not None else f"frame {t}"
            ax.set_title(when, fontsize=8)
        row[0].set_ylabel(f"{label}\n{out.num_kept} kept", fontsize=9)
    return _save(fig, title, path)


def _save(fig, title: str | None, path) -> Path:
    """The legend line under ``title``, then the PNG (its folder made if missing); closes the figure."""
    import matplotlib.pyplot as plt

    fig.suptitle((title + "\n" if title else "")
                 + "outlined: kept token; tinted: merged into the kept token of that colour; dark: dropped", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
