"""Carrying a pruning decision over to another per-token tensor of the same video (Qwen3-VL's deepstack features:
one more (T*L, D') tensor per ViT level, which the LLM adds at the kept tokens' positions)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..types import Pruned


def carry(pruned: Pruned, extra: Tensor) -> Tensor:
    """(K, D') rows of ``extra`` (T*L, D') for the kept tokens of ``pruned``.

    A kept token that is not merged takes its own row. A merged one takes the mean of the rows of every token it
    represents (``pruned.assignment``), itself included: the same tokens its main features were merged from. The
    methods do not record their blend weights (Tango's anchor weight, a static token's second-level merge), so a
    merged row is their plain mean; a selection-only method's rows are exact.
    """
    N = pruned.assignment.shape[0]
    if extra.dim() != 2 or extra.shape[0] != N:
        raise ValueError(f"extra must have shape (T*L, D') = ({N}, D'), got {tuple(extra.shape)}")
    K = pruned.num_kept
    own = extra[pruned.index]
    if not bool(pruned.merged.any()):
        return own
    rep = pruned.assignment
    ok = rep >= 0
    total = torch.zeros(K, extra.shape[1], dtype=torch.float32, device=extra.device)
    total.index_add_(0, rep[ok], extra[ok].float())
    count = torch.bincount(rep[ok], minlength=K).clamp(min=1).unsqueeze(1)
    mean = (total / count).to(extra.dtype)
    return torch.where(pruned.merged.unsqueeze(1), mean, own)
