"""SPEC step 0 inside vLLM's Qwen vision towers: the per-frame global query of the last ViT block.

The tower keeps its own attention kernel; a forward pre-hook on the last block's attention op captures the
rotated queries and keys it is called with, and we recompute the one attention map we need from them: per
temporal patch, the mean query over the patch's merged tokens against each merged token's mean key (the 2 x 2
merge group's), softmax, mean over heads — the same quantity ``models.qwen_vl.global_query_saliency`` computes
from transformers' modules (``core.saliency.global_query``).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor


@contextmanager
def capture_qk(attn_op: torch.nn.Module):
    """Capture ``query``/``key``/``value`` of the calls to ``attn_op`` (vLLM's MMEncoderAttention, called by keyword
    with (batch, seq, heads, head_dim) tensors) made inside the ``with`` block. Yields a dict filled on exit."""
    captured: dict[str, list[Tensor]] = {"q": [], "k": [], "v": []}

    def grab(module, args, kwargs):
        for i, (name, short) in enumerate((("query", "q"), ("key", "k"), ("value", "v"))):
            captured[short].append((kwargs[name] if name in kwargs else args[i]).detach())

    handle = attn_op.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()
