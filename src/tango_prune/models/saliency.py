"""Saliency from a vision tower without asking it for attention maps (SPEC step 0).

The tower keeps running on sdpa/flash attention; we recompute the one attention map we need from that layer's
queries and keys: the ones the tower itself computed (``hook_qk`` keeps its q/k projections' outputs during the
forward), or, without them, recomputed from the layer's input, layer norm and q/k projections.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor

from ..core.saliency import mean_attention_received


def _attn(layer):
    """(attention module, heads, scale) of one encoder layer: CLIP/SigLIP (``self_attn``) or DINOv2 (``attention``)
    naming; heads are this rank's under vLLM's tensor parallelism."""
    attn = getattr(layer, "self_attn", None) or layer.attention
    heads = getattr(attn, "num_heads_per_partition", None) or getattr(attn, "num_heads", None) or attn.num_attention_heads
    return attn, heads, float(getattr(attn, "scale", None) or attn.scaling)


def _qk(layer, hidden: Tensor, upcast: bool = True) -> tuple[Tensor, Tensor, float]:
    """Queries and keys (n, heads, N, d) of one pre-norm encoder layer: CLIP/SigLIP (``layer_norm1``, ``self_attn``)
    or DINOv2 (``norm1``, ``attention``) naming, with separate q/k projections (transformers) or one fused
    ``qkv_proj`` returning (out, bias) whose heads are this rank's (vLLM). float32 unless ``upcast=False``."""
    attn, heads, scale = _attn(layer)
    h = (getattr(layer, "layer_norm1", None) or layer.norm1)(hidden)
    if hasattr(attn, "qkv_proj"):
        q, k, _ = attn.qkv_proj(h)[0].chunk(3, dim=-1)  # the layout vLLM's own attention forward splits
    else:
        q, k = attn.q_proj(h), attn.k_proj(h)
    q = q.unflatten(-1, (heads, -1)).transpose(1, 2)
    k = k.unflatten(-1, (heads, -1)).transpose(1, 2)
    return (q.float(), k.float(), scale) if upcast else (q, k, scale)


@contextmanager
def hook_qk(layer):
    """Keep the queries and keys ``layer`` computes in the tower's own forward inside the ``with`` block: forward
    hooks on this instance's ``q_proj``/``k_proj`` (transformers' CLIP, SigLIP, DINOv2), removed on exit; no class
    is touched. Yields a dict; after the block, ``qk_from_hook(layer, it)`` gives (q, k, scale), or None when the
    layer has no such projections or they did not run exactly once (then recompute from the layer's input)."""
    attn = _attn(layer)[0]
    got: dict[str, list[Tensor]] = {"q": [], "k": []}
    if not (hasattr(attn, "q_proj") and hasattr(attn, "k_proj")):
        yield got
        return
    hooks = [getattr(attn, f"{n}_proj").register_forward_hook(lambda m, a, out, n=n: got[n].append(out.detach()))
             for n in ("q", "k")]
    try:
        yield got
    finally:
        for h in hooks:
            h.remove()


def qk_from_hook(layer, got: dict | None) -> tuple[Tensor, Tensor, float] | None:
    """(q, k, scale) in the tower's dtype, (n, heads, N, d) views of what ``hook_qk`` kept, or None."""
    if not got or len(got["q"]) != 1 or len(got["k"]) != 1:
        return None
    _, heads, scale = _attn(layer)
    q, k = (got[n][0].unflatten(-1, (heads, -1)).transpose(1, 2) for n in ("q", "k"))
    return q, k, scale


@torch.no_grad()
def attention_received(layer, hidden: Tensor | None, chunk: int = 8, qk=None) -> Tensor:
    """(N_img, N) mean attention each token receives in ``layer`` (over heads and queries); ``hidden`` is the
    layer's input (N_img, N, C). The fallback saliency: tokens the tower itself attends to. ``qk``: the layer's
    own (q, k, scale) from ``qk_from_hook``, which spares recomputing them; the result is the same."""
    if qk is not None:
        return mean_attention_received(*qk)
    out = []
    for s in range(0, hidden.shape[0], chunk):
        out.append(mean_attention_received(*_qk(layer, hidden[s : s + chunk], upcast=False)))
    return torch.cat(out)


@torch.no_grad()
def cls_attention(layer, hidden: Tensor | None, qk=None) -> Tensor:
    """(N_img, N - 1) attention of the CLS query (position 0) over the patches, mean of heads (CLIP, DINOv2);
    ``qk`` as in ``attention_received``."""
    q, k, scale = _qk(layer, hidden) if qk is None else qk
    p = torch.softmax(q[:, :, :1].float() @ k.float().transpose(-1, -2) * scale, dim=-1)  # (n, heads, 1, N)
    return p[:, :, 0, 1:].mean(dim=1)


@torch.no_grad()
def map_head_attention(head, post_layernorm, hidden: Tensor) -> Tensor:
    """(N_img, N) SigLIP attention-pooling head weights: its learned probe over the post-layernormed tokens,
    averaged over heads (the saliency of Tango's release for LLaVA-OV/LLaVA-Video)."""
    h = post_layernorm(hidden).to(head.probe.dtype)
    probe = head.probe.expand(h.shape[0], -1, -1)
    _, w = head.attention(probe, h, h, need_weights=True, average_attn_weights=True)
    return w[:, 0].float()


def load_siglip_head(path: str, dtype=None, device=None):
    """(head, post_layernorm) from a local SigLIP checkpoint dir (the LLaVA checkpoints do not carry the head)."""
    from pathlib import Path

    from transformers import SiglipVisionModel

    if not Path(path).is_dir():
        raise ValueError(f"siglip_head must be a local SigLIP checkpoint directory, got {path!r}")
    tower = SiglipVisionModel.from_pretrained(path, local_files_only=True, torch_dtype=dtype)
    core = getattr(tower, "vision_model", tower)
    if getattr(core, "head", None) is None:
        raise ValueError(f"{path} has no attention-pooling head (vision_use_head is off); use another SigLIP checkpoint")
    return core.head.to(device).eval(), core.post_layernorm.to(device).eval()
