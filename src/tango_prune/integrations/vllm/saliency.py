"""SPEC step 0 inside vLLM's Qwen vision towers: the per-frame global query of the last ViT block.

The tower keeps its own attention kernel; a forward pre-hook on the last block's attention op captures the
rotated queries and keys it is called with, and we recompute the one attention map we need from them: per
temporal patch, the mean query over the patch's merged tokens against each merged token's mean key (the 2 x 2
merge group's), softmax, mean over heads — the same quantity ``models.qwen_vl.global_query_saliency`` computes
from transformers' modules.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor


@contextmanager
def capture_qk(attn_op: torch.nn.Module):
    """Capture ``query``/``key`` of the calls to ``attn_op`` (vLLM's MMEncoderAttention, called by keyword with
    (batch, seq, heads, head_dim) tensors) made inside the ``with`` block. Yields a dict filled on exit."""
    captured: dict[str, list[Tensor]] = {"q": [], "k": []}

    def grab(module, args, kwargs):
        q = kwargs["query"] if "query" in kwargs else args[0]
        k = kwargs["key"] if "key" in kwargs else args[1]
        captured["q"].append(q.detach())
        captured["k"].append(k.detach())

    handle = attn_op.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


@torch.no_grad()
def global_query(q: Tensor, k: Tensor, grid: list[list[int]], merge: int, order: Tensor | None = None,
                 all_reduce=None, total_heads: int | None = None) -> list[Tensor]:
    """Per video, (T, L) global-query saliency over its merged tokens in raster order.

    q, k:   (N, heads, d) rotated queries/keys of the last block, N patches, each 2 x 2 merge group contiguous.
    grid:   per video (t, h, w) in patches; L = h * w / merge**2.
    order:  (N / merge**2,) permutation taking the tower's token order to raster order (Qwen2.5-VL's window
            reordering: vLLM's ``reverse_indices``); None when the tower runs in raster order (Qwen3-VL).
    all_reduce / total_heads: with tensor parallelism each rank holds some heads; the head sum is all-reduced so
            that every rank selects the same tokens.
    """
    unit = merge * merge
    N, heads, d = q.shape
    q = q.float().view(N // unit, unit, heads, d).mean(dim=1)
    k = k.float().view(N // unit, unit, heads, d).mean(dim=1)
    if order is not None:
        order = order.to(q.device)
        q, k = q[order], k[order]
    scale = d**-0.5
    out, a = [], 0
    for t, h, w in grid:  # one einsum per video: frames of one video share L
        n = int(h) * int(w) // unit
        t = int(t)
        qf = q[a : a + t * n].view(t, n, heads, d).mean(dim=1)  # (t, heads, d)
        kf = k[a : a + t * n].view(t, n, heads, d)
        att = torch.softmax(torch.einsum("thd,tnhd->thn", qf, kf) * scale, dim=-1).sum(dim=1)  # (t, n)
        if all_reduce is not None:
            att = all_reduce(att)
        out.append(att / (total_heads or heads))
        a += t * n
    return out
