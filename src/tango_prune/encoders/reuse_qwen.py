"""The encoder stage inside Qwen's towers (Qwen2-VL, Qwen2.5-VL, Qwen3-VL (+MoE), Qwen3.5 (+MoE)): reuse across
temporal patches.

Qwen's tower encodes a video as temporal patches (2 frames each); every attention segment lies inside one temporal
patch (a full-attention layer's segment is the temporal patch, a Qwen2.5-VL window layer's a window of it) and the
tower's rotary positions are 2-D, the same in every temporal patch. So encoders/reuse.py's mechanism carries over
with a temporal patch for a frame: every token runs the first ``gate_layer`` blocks; at the gate each temporal
patch is compared with its key temporal patch position by position (``reuse.schedule``); a reused token takes the
key's state at every later layer; a computed token's query attends over its segment with reused positions supplying
the key's (rotated) keys and values.

How it runs: for one tower call on one video, ``reuse_blocks`` replaces the tower's block list *on this instance*
by wrappers (restored on exit). The tower's own forward does the rest (patch and position embeddings, Qwen2.5-VL's
window order, Qwen3-VL's deepstack taps, the merger) and hands each wrapper the full states. Past the gate a wrapper
runs the stock block on the key temporal patches only, then the computed rows of the others (projections and MLP on
those rows alone), and returns every row: a reused row is its key's output. So a deepstack tap and the last block's
global-query saliency see a reused token as its key (its query and key are the key's), and positions are untouched.
A video whose temporal patches are all alike gives the stock states bit for bit; ``tau=1`` is the stock forward.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .reuse import ReuseConfig, schedule


class StagePlan:
    """One tower call's schedule: decided at the gate from the states there, read by every later block."""

    def __init__(self, cfg: ReuseConfig, frames: int, computed: Tensor | None = None,
                 grid: tuple[int, int] | None = None, rows: Tensor | None = None) -> None:
        self.cfg, self.T, self.given = cfg, frames, computed
        self.grid, self.rows = grid, rows  # the patch grid and each row's raster index, for the halo
        self.computed: Tensor | None = None

    def decide(self, gate: Tensor) -> None:
        T = self.T
        N = gate.shape[0] // T
        if self.given is not None:  # a measured pattern (bench): frame 0 and all-True frames are keys
            c = self.given.to(torch.bool).clone()
            if tuple(c.shape) != (T, N):
                raise ValueError(f"computed must be (temporal patches, patches) = ({T}, {N}), got {tuple(c.shape)}")
            c[0] = True
            ref = torch.cummax(torch.where(c.all(1).cpu(), torch.arange(T), 0), 0).values
        else:
            ref, c = schedule(gate.view(T, N, -1), self.cfg.tau, 0, self.cfg.key_share, self.cfg.halo, self.grid, self.rows)
        self.N, self.ref, self.computed = N, ref, c.to(gate.device)
        ar = torch.arange(T)
        self.key = (ref == ar).nonzero().squeeze(1)
        self.dep = ((ref != ar) & self.computed.any(1).cpu()).nonzero().squeeze(1)
        slot = torch.full((T,), -1, dtype=torch.long)
        slot[self.key] = torch.arange(self.key.numel())
        self.src = slot[ref]  # each temporal patch's key, as a row of the key batch
        m = self.computed[self.dep]
        self.fr, self.pos = m.nonzero(as_tuple=True)  # (temporal patch among dep, position) of each computed row
        self.rank = m.long().cumsum(1)[self.fr, self.pos] - 1
        self.width = int(m.sum(1).max()) if self.dep.numel() else 0
        dev = gate.device
        self.key_rows = (self.key.to(dev)[:, None] * N + torch.arange(N, device=dev)).flatten()
        self.dep_rows = self.dep.to(dev)[self.fr] * N + self.pos


def _segments(cu: Tensor, frames: Tensor, N: int) -> Tensor:
    """cu_seqlens of the attention segments that lie in ``frames`` (temporal patches of N rows), renumbered."""
    cu = cu.long()
    lengths = cu[1:] - cu[:-1]
    keep = torch.isin(torch.div(cu[:-1], N, rounding_mode="floor"), frames.to(cu.device))
    return F.pad(lengths[keep].cumsum(0), (1, 0)).to(torch.int32)


def frame_segments(cu: Tensor, N: int) -> Tensor:
    """(N,) the attention segment of each position of a temporal patch (the same in every temporal patch)."""
    cu = cu.long()
    first = cu[(cu > 0) & (cu < N)]
    return torch.bucketize(torch.arange(N, device=cu.device), first, right=True)


class _StageBlock(nn.Module):
    def __init__(self, block: nn.Module, index: int, plan: StagePlan, rotary) -> None:
        super().__init__()
        self.block, self.index, self.plan, self.rotary = block, index, plan, rotary

    def forward(self, hidden_states: Tensor, cu_seqlens: Tensor, position_embeddings=None, **kw) -> Tensor:
        p = self.plan
        if self.index < p.cfg.gate_layer:
            return self.block(hidden_states, cu_seqlens=cu_seqlens, position_embeddings=position_embeddings, **kw)
        if p.computed is None:
            p.decide(hidden_states)
        if p.key.numel() == p.T:  # every temporal patch is a key: the stock block
            return self.block(hidden_states, cu_seqlens=cu_seqlens, position_embeddings=position_embeddings, **kw)
        cos, sin = position_embeddings
        rows = p.key_rows
        cu = _segments(cu_seqlens, p.key, p.N)
        if "max_seqlen" in kw:
            kw["max_seqlen"] = int((cu[1:] - cu[:-1]).max())
        attn = self.block.attn
        got: dict = {}
        hook = attn.qkv.register_forward_hook(lambda m, a, o: got.__setitem__("qkv", o)) if p.dep.numel() else None
        try:
            out = self.block(hidden_states[rows], cu_seqlens=cu, position_embeddings=(cos[rows], sin[rows]), **kw)
        finally:
            if hook is not None:
                hook.remove()
        D = out.shape[-1]
        full = out.view(-1, p.N, D)[p.src].reshape(-1, D)  # every temporal patch a copy of its key
        if p.dep.numel():
            full[p.dep_rows] = self._partial(hidden_states[p.dep_rows], got["qkv"], cos, sin, cu_seqlens)
        return full

    def _partial(self, x: Tensor, key_qkv: Tensor, cos: Tensor, sin: Tensor, cu: Tensor) -> Tensor:
        """The block on the dependent temporal patches' computed rows x (M, D), batched: queries padded per
        temporal patch to the plan's width, keys and values over the whole segment (the key's at reused
        positions, the rows' own at computed ones)."""
        p, blk = self.plan, self.block
        attn = blk.attn
        heads = attn.num_heads
        key_rows, rows = p.key_rows, p.dep_rows
        _, k_key, v_key = key_qkv.unflatten(-1, (3, heads, -1)).unbind(1)
        k_key = self.rotary(k_key, k_key, cos[key_rows], sin[key_rows])[1]
        sel = p.src[p.dep].to(x.device)
        k = k_key.view(-1, p.N, heads, k_key.shape[-1])[sel]  # (n_dep, N, heads, d): copies, written over below
        v = v_key.reshape(-1, p.N, heads, v_key.shape[-1])[sel]
        q_r, k_r, v_r = attn.qkv(blk.norm1(x)).unflatten(-1, (3, heads, -1)).unbind(1)
        q_r, k_r = self.rotary(q_r, k_r, cos[rows], sin[rows])
        k[p.fr, p.pos], v[p.fr, p.pos] = k_r, v_r
        q = q_r.new_zeros(k.shape[0], p.width, heads, q_r.shape[-1])
        q[p.fr, p.rank] = q_r
        seg = frame_segments(cu, p.N)
        mask = None
        if int(seg.max()) > 0:  # window attention: a query sees its own window only
            qpos = torch.zeros(k.shape[0], p.width, dtype=torch.long, device=x.device)
            qpos[p.fr, p.rank] = p.pos
            mask = (seg[qpos][..., None] == seg[None, None, :])[:, None]
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                           scale=attn.scaling)
        x = x + attn.proj(o.transpose(1, 2).flatten(-2)[p.fr, p.rank])
        return x + blk.mlp(blk.norm2(x))


@contextmanager
def reuse_blocks(visual: nn.Module, cfg: ReuseConfig, grid: tuple[int, int, int], computed: Tensor | None = None):
    """Within the block, ``visual`` (a Qwen tower) runs one video of ``grid`` (temporal patches, h, w) with the
    stage; the yielded plan's ``computed`` ((frames, patches) bool: the tokens that ran past the gate) is set by the
    call. ``computed`` given replaces the gate's decision (the speed benchmark's measured pattern)."""
    rotary = sys.modules[type(visual).__module__].apply_rotary_pos_emb_vision  # the tower's own helper
    t, h, w = grid
    plan = StagePlan(cfg, t, computed, (h, w), tower_rows(visual, h, w) if cfg.halo else None)
    stock = visual.blocks
    visual.blocks = nn.ModuleList(_StageBlock(b, i, plan, rotary) for i, b in enumerate(stock))
    try:
        yield plan
    finally:
        visual.blocks = stock


def tower_rows(visual: nn.Module, h: int, w: int) -> Tensor:
    """(h * w,) the raster index (row-major over the h x w patch grid) of each row of one temporal patch as the
    tower's blocks hold it: the processor's order (each merge group's patches together), then Qwen2.5-VL's window
    order. ``pattern[:, tower_rows(...)]`` takes a raster pattern to the rows ``reuse_blocks(computed=)`` expects."""
    m = visual.spatial_merge_size
    rows = torch.arange(h * w).view(h // m, m, w // m, m).permute(0, 2, 1, 3).flatten()
    if getattr(visual, "window_size", None):
        from transformers.vision_utils import get_vision_window_index

        index, _ = get_vision_window_index(torch.tensor([[1, h, w]]), m, visual.window_size, visual.patch_size)
        rows = rows.view(-1, m * m)[index].flatten()
    return rows
