"""What every method shares: budgets, the saliency fallback, and assembling a valid ``Pruned``."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..core.budget import exact_count
from ..core.saliency import feature_saliency
from ..types import Pruned, VideoTokens, positions_of

__all__ = ["VllmFloorMethod", "check_floor", "check_retention", "exact_count", "finish", "frame_budgets", "saliency_of", "no_options"]


def check_retention(retention: float) -> float:
    try:
        r = float(retention)
    except (TypeError, ValueError):
        raise ValueError(f"retention must be a number in (0, 1], got {retention!r}") from None
    if not 0.0 < r <= 1.0:
        raise ValueError(f"retention must be in (0, 1] (share of tokens kept), got {retention}; e.g. retention=0.1")
    return r


def no_options(name: str, opts: dict, valid=()) -> None:
    """Reject any option of ``opts`` not named in ``valid``, naming the ones the method takes."""
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        takes = ", ".join(["retention", *valid])
        raise ValueError(f"method {name!r} got unknown options {unknown}; valid: {takes} (see help(get_method({name!r})))")


def frame_budgets(total: int, frames: int, device=None) -> Tensor:
    """(frames,) int64 counts summing to ``total``, as even as possible (earlier frames get the remainder)."""
    base, extra = divmod(total, frames)
    return torch.full((frames,), base, dtype=torch.long, device=device) + (torch.arange(frames, device=device) < extra)


def saliency_of(vt: VideoTokens) -> tuple[Tensor, str]:
    """(T, L) float32 saliency and its source: the given one, or the feature-only fallback
    (1 - cosine to the frame's mean token: tokens unlike their frame's average score high)."""
    if vt.saliency is not None:
        return vt.saliency.float(), "given"
    return feature_saliency(vt.features), "feature-distinctiveness"


def topk_per_frame(score: Tensor, counts: Tensor) -> Tensor:
    """Flat indices of the top ``counts[t]`` entries of each row of ``score`` (T, L), vectorised over frames."""
    T, L = score.shape
    order = torch.argsort(score, dim=1, descending=True, stable=True)
    take = torch.arange(L, device=score.device)[None, :] < counts[:, None]
    rows = torch.arange(T, device=score.device)[:, None].expand(T, L)
    return (rows[take] * L + order[take]).sort().values


def finish(
    vt: VideoTokens,
    index: Tensor,
    *,
    features: Tensor | None = None,
    merged: Tensor | None = None,
    assignment: Tensor | None = None,
    segments: list[int] | None = None,
    info: dict[str, Any] | None = None,
) -> Pruned:
    """A valid ``Pruned`` from kept flat indices (any order).

    ``features``/``merged`` are per kept row in the order of ``index``; ``assignment`` (T*L,) names
    rows in that same order (-1: dropped). Defaults: the input features, nothing merged, every kept
    token represents itself and nothing else. Rows are re-sorted by index and the assignment follows.
    """
    T, L, D = vt.features.shape
    dev = vt.features.device
    index = index.to(device=dev, dtype=torch.long)
    order = torch.argsort(index)
    index = index[order]
    if features is None:
        features = vt.features.reshape(T * L, D)[index]
    else:
        features = features[order].to(vt.features.dtype)
    merged = torch.zeros(index.shape[0], dtype=torch.bool, device=dev) if merged is None else merged[order]
    if assignment is None:
        assignment = torch.full((T * L,), -1, dtype=torch.long, device=dev)
        assignment[index] = torch.arange(index.shape[0], device=dev)
    else:
        new_row = torch.empty_like(order)
        new_row[order] = torch.arange(order.shape[0], device=dev)
        assignment = torch.where(assignment >= 0, new_row[assignment.clamp(min=0)], assignment)
    return Pruned(index, features, positions_of(index, vt.grid), segments or [T], merged, assignment, vt.grid,
                  dict(info or {}))


FLOORS = ("vllm", "exact")


def check_floor(floor: str) -> str:
    """The count option of the methods vLLM ships (evs, vidcom2): vLLM's own count, or exactly round(r T L)."""
    if floor not in FLOORS:
        raise ValueError(f"floor must be one of {FLOORS} (vLLM's count or exactly round(r T L)), got {floor!r}")
    return floor


class VllmFloorMethod:
    """What the methods vLLM ships (evs, vidcom2) share: ``retention`` and ``floor`` (check_floor) and no other option.
    The default floor "vllm" may keep more than the budget (vLLM's count), so ``exact_budget`` is False."""

    exact_budget = False
    name = ""  # set by @register: the error names the method

    def __init__(self, retention: float = 0.1, floor: str = "vllm", **opts) -> None:
        no_options(self.name, opts, valid=("floor",))
        self.retention = check_retention(retention)
        self.floor = check_floor(floor)
