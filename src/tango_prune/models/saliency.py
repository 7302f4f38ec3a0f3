"""Saliency from a vision tower without asking it for attention maps (SPEC step 0).

The tower keeps running on sdpa/flash attention; we recompute the one attention map we need from that layer's
own input, layer norm and q/k projections, a few frames at a time.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _qk(layer, hidden: Tensor) -> tuple[Tensor, Tensor, float]:
    """Queries and keys of one pre-norm encoder layer: CLIP/SigLIP (``layer_norm1``, ``self_attn``) or DINOv2
    (``norm1``, ``attention``) naming, with separate q/k projections (transformers) or one fused ``qkv_proj``
    returning (out, bias) whose heads are this rank's (vLLM)."""
    attn = getattr(layer, "self_attn", None) or layer.attention
    h = (getattr(layer, "layer_norm1", None) or layer.norm1)(hidden)
    heads = getattr(attn, "num_heads_per_partition", None) or getattr(attn, "num_heads", None) or attn.num_attention_heads
    scale = getattr(attn, "scale", None) or attn.scaling
    if hasattr(attn, "qkv_proj"):
        q, k, _ = attn.qkv_proj(h)[0].chunk(3, dim=-1)  # the layout vLLM's own attention forward splits
    else:
        q, k = attn.q_proj(h), attn.k_proj(h)
    q = q.unflatten(-1, (heads, -1)).transpose(1, 2).float()
    k = k.unflatten(-1, (heads, -1)).transpose(1, 2).float()
    return q, k, float(scale)


@torch.no_grad()
def attention_received(layer, hidden: Tensor, chunk: int = 8) -> Tensor:
    """(N_img, N) mean attention each token receives in ``layer`` (over heads and queries); ``hidden`` is the
    layer's input (N_img, N, C). The fallback saliency: tokens the tower itself attends to."""
    out = []
    for s in range(0, hidden.shape[0], chunk):
        q, k, scale = _qk(layer, hidden[s : s + chunk])
        p = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)  # (n, heads, N, N), one chunk only
        out.append(p.mean(dim=(1, 2)))
    return torch.cat(out)


@torch.no_grad()
def cls_attention(layer, hidden: Tensor) -> Tensor:
    """(N_img, N - 1) attention of the CLS query (position 0) over the patches, mean of heads (CLIP, DINOv2)."""
    q, k, scale = _qk(layer, hidden)
    p = torch.softmax(q[:, :, :1] @ k.transpose(-1, -2) * scale, dim=-1)  # (n, heads, 1, N)
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
