"""The encoder stage (encoders/reuse.py) inside vLLM's SigLIP tower for LLaVA-OneVision.

SigLIP encodes each frame alone (a frame is a batch row, full attention within it, no rotary), so the mechanism is
``encoders.reuse.encode``'s: every token runs the first ``gate_layer`` layers; at the gate each frame is compared with
its key frame position by position (``reuse.schedule``); past the gate a wrapper runs vLLM's stock encoder layer on
the key frames only (capturing their keys and values at the attention op), then the computed rows of the other frames
through the layer's own modules (fused ``qkv_proj``, ``out_proj``, norms, MLP), their queries attending over the
whole frame with reused positions supplying the key frame's keys and values, and returns every frame, a reused
token as its key frame's. The layer the saliency reads then sees a reused token as its key frame's.

For one video per tower call, the encoder's layer list is replaced on this instance by wrappers (restored on exit),
so vLLM's own tower forward (embeddings, the feature layer, the projector, pooling) runs around them. Under tensor
parallelism the gate states are all-reduced before the schedule is decided (every rank reuses the same tokens).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch.nn.functional as F
from torch import Tensor, nn

from ...encoders.reuse import ReuseConfig
from .encoder_stage import AgreedPlan, wrapped
from .qk_capture import capture_qk


class _StageLayer(nn.Module):
    def __init__(self, layer: nn.Module, index: int, plan: AgreedPlan) -> None:
        super().__init__()
        self.layer, self.index, self.plan = layer, index, plan

    # what the plugin's saliency reads of the layer (llava_ov._tango_block): the stock modules
    @property
    def self_attn(self) -> nn.Module:
        return self.layer.self_attn

    @property
    def layer_norm1(self) -> nn.Module:
        return self.layer.layer_norm1

    def forward(self, hidden_states: Tensor):
        p = self.plan
        if self.index < p.cfg.gate_layer:
            return self.layer(hidden_states)
        if p.computed is None:
            p.decide(hidden_states.flatten(0, 1))  # (T * N, D): a frame for a temporal patch
        if p.key.numel() == p.T:  # every frame a key frame: the stock layer
            return self.layer(hidden_states)
        key = p.key.to(hidden_states.device)
        with capture_qk(self.layer.self_attn.attn) as cap:
            out, extra = self.layer(hidden_states[key])
        full = out[p.src.to(out.device)]  # every frame a copy of its key frame
        if p.dep.numel():
            dep = p.dep.to(out.device)
            x = hidden_states[dep][p.fr, p.pos]
            full[dep[p.fr], p.pos] = self._partial(x, cap["k"][0], cap["v"][0])
        return full, extra

    def _partial(self, x: Tensor, k_key: Tensor, v_key: Tensor) -> Tensor:
        """The layer on the dependent frames' computed rows x (M, D), batched: queries padded per frame to the
        plan's width; keys and values over the whole frame, the key frame's at reused positions."""
        p, layer = self.plan, self.layer
        attn = layer.self_attn
        heads = attn.num_heads_per_partition
        sel = p.src[p.dep].to(x.device)
        k = k_key.unflatten(-1, (heads, -1))[sel]  # (n_dep, N, heads, d): copies, written over below
        v = v_key.unflatten(-1, (heads, -1))[sel]
        qkv, _ = attn.qkv_proj(layer.layer_norm1(x))
        q_r, k_r, v_r = (t.unflatten(-1, (heads, -1)) for t in qkv.chunk(3, dim=-1))
        k[p.fr, p.pos], v[p.fr, p.pos] = k_r, v_r
        q = q_r.new_zeros(k.shape[0], p.width, heads, q_r.shape[-1])
        q[p.fr, p.rank] = q_r
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=attn.scale)
        o, _ = attn.out_proj(o.transpose(1, 2).flatten(-2)[p.fr, p.rank])
        x = x + o
        return x + layer.mlp(layer.layer_norm2(x))


@contextmanager
def stage_layers(encoder: nn.Module, cfg: ReuseConfig, frames: int, tp: int, computed: Tensor | None = None):
    """Within the block, ``encoder`` (vLLM's SigLIP encoder) runs one video of ``frames`` frames with the stage; the
    yielded plan's ``computed`` ((frames, N) bool) is set by the call. ``computed`` given replaces the gate."""
    plan = AgreedPlan(cfg, frames, tp, computed)
    with wrapped(encoder, "layers", lambda layer, i: _StageLayer(layer, i, plan)):
        yield plan
