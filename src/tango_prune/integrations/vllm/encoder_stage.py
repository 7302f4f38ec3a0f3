"""The encoder stage (encoders/reuse_qwen.py) inside vLLM's Qwen towers: Qwen2.5-VL, Qwen3-VL (+MoE), Qwen3.5 (+MoE).

``TANGO_PRUNE_OPTIONS='{"encoder": "reuse"}'`` (or ``"reuse:tau=0.9"``, or a dict of ``ReuseConfig`` fields): each
video goes through vLLM's own tower alone (``_process_video_input`` on a one-video sub-input: a temporal patch must
never refer to another video's key), its block list replaced on this instance by wrappers for that call (restored
on exit). The mechanism is the transformers one: every row runs the first ``gate_layer`` blocks; at the gate each
temporal patch is compared with its key temporal patch position by position (``reuse.schedule``); past the gate a
wrapper runs vLLM's stock block on the key temporal patches only (their own attention metadata, made by the tower's
``prepare_encoder_metadata`` for a grid of the key patches: backend-correct segment offsets), then the computed rows
of the others through the block's own modules (fused ``qkv``, the tower's rotary op, ``proj``, norms, MLP), their
queries attending over their segment with reused positions supplying the key's rotated keys and values (captured
from the stock call), and returns every row, a reused one as its key's.

Tensor parallel: the gate states are all-reduced (and divided by the world size) before the schedule is decided, so
every rank decides on the same numbers, as the saliency does; ``proj`` and the MLP all-reduce as in the stock block.
The last block's queries and keys for the global-query saliency are the stock call's for key rows, the computed
rows' own, and a reused row's key's (``StagePlan.qk``), as in transformers.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...encoders.reuse import ReuseConfig
from ...encoders.reuse_qwen import StagePlan, frame_segments
from .qk_capture import capture_qk
from .runtime import _logger
from .vllm_names import tp_size


def check_stage(model) -> None:
    """At load, where the stage is asked for: refuse what it cannot run on (one line each, before any request)."""
    visual = model.visual
    why = None
    if model.use_data_parallel:
        why = "a data-parallel vision tower (--mm-encoder-tp-mode data): each rank encodes other videos"
    elif model._tango_compiled_tower:
        why = "a compiled vision tower (compile_mm_encoder): the stage swaps the tower's blocks per call"
    elif "FLASHINFER" in str(getattr(visual, "attn_backend", "")):
        why = ("the FlashInfer vision attention backend (its cu_seqlens are not segment offsets); pick another "
               "with --mm-encoder-attn-backend")
    if why:
        raise ValueError(f"tango-prune: TANGO_PRUNE_OPTIONS encoder is not supported with {why}; drop encoder")
    # a measured pattern replacing the gate (benchmarks): a path to a (temporal patches, patches) raster
    model._tango_encoder_pattern = model.tango_prune_settings.options.get("encoder_pattern")


def encode_staged(model, video_input, reason: str | None) -> tuple[tuple[Tensor, ...], list[Tensor] | None]:
    """``_process_video_input`` with the stage: each video alone through vLLM's tower (``model._tango_tower`` on a
    one-video sub-input) inside ``stage_blocks``. Returns each video's rows and saliency (None: no saliency)."""
    grid, pixels = video_input["video_grid_thw"], video_input["pixel_values_videos"]
    out, sal, row = [], [], 0
    for t, h, w in grid.tolist():
        sub = {"type": "pixel_values_videos", "pixel_values_videos": pixels[row:row + t * h * w],
               "video_grid_thw": grid.new_tensor([[t, h, w]])}
        (emb,), s = staged_tower(model, sub, reason)
        out.append(emb)
        sal.append(None if s is None else s[0])
        row += t * h * w
    return tuple(out), None if any(s is None for s in sal) else sal


def staged_tower(model, sub: dict, reason: str | None) -> tuple[tuple[Tensor], list[Tensor] | None]:
    """One video (or, under ``chunk_frames``, one chunk of it: its first temporal patch a key) through vLLM's tower
    with the stage: ``model._tango_tower``'s output, its computed share logged."""
    cfg, pattern = model._tango_encoder, getattr(model, "_tango_encoder_pattern", None)
    t, h, w = sub["video_grid_thw"][0].tolist()
    given = None
    if pattern:
        raster = torch.load(pattern).bool()
        if tuple(raster.shape) != (t, h * w):
            raise ValueError(f"tango-prune: encoder_pattern is {tuple(raster.shape)}, the video ({t}, {h * w})")
        given = raster[:, tower_rows(model.visual, h, w)].to(sub["pixel_values_videos"].device)
    with stage_blocks(model.visual, cfg, (t, h, w), tp_size(model.visual.blocks[-1].attn), given) as plan:
        out = model._tango_tower(sub, reason, plan)
    share = 1.0 if plan.computed is None else float(plan.computed.float().mean())
    _logger().info("tango-prune: encoder stage: %d x %d x %d video, %.4f of its tokens computed past the gate, "
                   "%d key temporal patches", t, h, w, share, plan.T if plan.computed is None else plan.key.numel())
    return out


class AgreedPlan(StagePlan):
    """A schedule every tensor-parallel rank decides alike: from the gate states all-reduced (and divided by the
    world size), as the saliency is, so that every rank reuses the same tokens."""

    def __init__(self, cfg: ReuseConfig, frames: int, tp: int, computed: Tensor | None = None,
                 grid: tuple[int, int] | None = None, rows: Tensor | None = None) -> None:
        super().__init__(cfg, frames, computed, grid, rows)
        self.tp = tp

    def decide(self, gate: Tensor) -> None:
        if self.tp > 1:
            from vllm.distributed import tensor_model_parallel_all_reduce

            gate = tensor_model_parallel_all_reduce(gate.clone()) / self.tp
        super().decide(gate)


@contextmanager
def wrapped(owner: nn.Module, attr: str, wrap):
    """Within the block ``owner.<attr>`` (a module list: a tower's blocks) is ``[wrap(module, i), ...]`` on this
    instance; restored on exit. The tower's own forward then calls the wrappers."""
    stock = getattr(owner, attr)
    setattr(owner, attr, nn.ModuleList(wrap(m, i) for i, m in enumerate(stock)))
    try:
        yield
    finally:
        setattr(owner, attr, stock)


class VllmStagePlan(AgreedPlan):
    """One video's schedule plus what vLLM's blocks need for the key temporal patches alone."""

    def __init__(self, cfg: ReuseConfig, visual: nn.Module, grid: tuple[int, int, int], tp: int,
                 computed: Tensor | None = None) -> None:
        t, h, w = grid
        super().__init__(cfg, t, tp, computed, (h, w), tower_rows(visual, h, w) if cfg.halo else None)
        self.visual, self.thw = visual, grid
        self.depth = len(visual.blocks)
        self.qk: tuple[Tensor, Tensor] | None = None  # the last block's (rows, heads, d) queries and keys

    def decide(self, gate: Tensor) -> None:
        super().decide(gate)
        _, h, w = self.thw
        dev = gate.device
        self.meta = self.visual.prepare_encoder_metadata([[int(self.key.numel()), h, w]], device=dev)
        self.full = set(getattr(self.visual, "fullatt_block_indexes", range(self.depth)))
        one = self.visual.prepare_encoder_metadata([[1, h, w]], device=dev)
        self.seg = frame_segments(one.get("cu_window_seqlens", one["cu_seqlens"]).to(dev), self.N)

    def key_args(self, index: int) -> dict:
        """The block's attention metadata for the key temporal patches (full or window layer)."""
        m = self.meta
        if "cu_window_seqlens" not in m:  # Qwen3-VL / Qwen3.5: full attention in every block
            return dict(cu_seqlens=m["cu_seqlens"], max_seqlen=m["max_seqlen"], sequence_lengths=m.get("sequence_lengths"))
        kind = "full" if index in self.full else "window"
        return dict(cu_seqlens=m["cu_seqlens" if kind == "full" else "cu_window_seqlens"],
                    max_seqlen=m[f"max_seqlen_{kind}"], sequence_lengths=m.get(f"sequence_lengths_{kind}"))


class _VllmStageBlock(nn.Module):
    def __init__(self, block: nn.Module, index: int, plan: VllmStagePlan) -> None:
        super().__init__()
        self.block, self.index, self.plan = block, index, plan
        # Qwen2.5-VL's block adds the attention output inside its second norm (a fused residual RMSNorm)
        self.fused = type(block).__name__ == "Qwen2_5_VisionBlock"

    @property
    def attn(self) -> nn.Module:  # what the plugin's saliency capture and checks look up on visual.blocks[i]
        return self.block.attn

    def forward(self, x: Tensor, cu_seqlens: Tensor, rotary_pos_emb_cos: Tensor, rotary_pos_emb_sin: Tensor,
                max_seqlen: Tensor, sequence_lengths: Tensor | None = None) -> Tensor:
        p = self.plan
        stock = dict(cu_seqlens=cu_seqlens, rotary_pos_emb_cos=rotary_pos_emb_cos, rotary_pos_emb_sin=rotary_pos_emb_sin,
                     max_seqlen=max_seqlen, sequence_lengths=sequence_lengths)
        if self.index < p.cfg.gate_layer:
            return self.block(x, **stock)
        if p.computed is None:
            p.decide(x.squeeze(1))
        if p.key.numel() == p.T:  # every temporal patch is a key: the stock block
            return self.block(x, **stock)
        cos, sin, rows = rotary_pos_emb_cos, rotary_pos_emb_sin, p.key_rows
        with capture_qk(self.block.attn.attn) as cap:
            out = self.block(x[rows], rotary_pos_emb_cos=cos[rows], rotary_pos_emb_sin=sin[rows],
                             **p.key_args(self.index))
        full = out.view(-1, p.N, *out.shape[1:])[p.src].flatten(0, 1)  # every temporal patch a copy of its key
        last = self.index == p.depth - 1
        q_key, k_key, v_key = (cap[n][0].squeeze(0) for n in ("q", "k", "v"))  # (key rows, heads, d)
        q_dep = None
        if p.dep.numel():
            full[p.dep_rows], q_dep, k_dep = self._partial(x[p.dep_rows], k_key, v_key, cos, sin)
        if last:
            q, k = (t.view(-1, p.N, *t.shape[1:])[p.src].flatten(0, 1) for t in (q_key, k_key))
            if q_dep is not None:
                q[p.dep_rows], k[p.dep_rows] = q_dep, k_dep
            p.qk = (q, k)
        return full

    def _partial(self, x: Tensor, k_key: Tensor, v_key: Tensor, cos: Tensor, sin: Tensor):
        """The block on the dependent temporal patches' computed rows x (M, 1, D), batched: queries padded per
        temporal patch to the plan's width, keys and values over the whole segment (the key's at reused positions,
        the rows' own at computed ones). Returns the rows' outputs (M, 1, D) and their rotated queries and keys."""
        p, blk = self.plan, self.block
        attn = blk.attn
        heads, d = attn.num_attention_heads_per_partition, attn.hidden_size_per_attention_head
        rows = p.dep_rows
        sel = p.src[p.dep].to(x.device)
        k = k_key.view(-1, p.N, heads, d)[sel]  # (n_dep, N, heads, d): copies, written over below
        v = v_key.reshape(-1, p.N, heads, d)[sel]
        qkv, _ = attn.qkv(blk.norm1(x))
        q_r, k_r, v_r = qkv.view(-1, 3, heads, d).unbind(1)
        q_r, k_r = attn.apply_rotary_emb(torch.stack([q_r, k_r]).contiguous(), cos[rows], sin[rows]).unbind(0)
        k[p.fr, p.pos], v[p.fr, p.pos] = k_r, v_r
        q = q_r.new_zeros(k.shape[0], p.width, heads, d)
        q[p.fr, p.rank] = q_r
        mask = None
        if self.index not in p.full:  # a window layer (Qwen2.5-VL): a query sees its own window only
            qpos = torch.zeros(k.shape[0], p.width, dtype=torch.long, device=x.device)
            qpos[p.fr, p.rank] = p.pos
            mask = (p.seg[qpos][..., None] == p.seg[None, None, :])[:, None]
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                           scale=d ** -0.5)
        o, _ = attn.proj(o.transpose(1, 2).flatten(-2)[p.fr, p.rank].unsqueeze(1))
        if self.fused:
            h, x = blk.norm2(x, residual=o)
        else:
            x = x + o
            h = blk.norm2(x)
        return x + blk.mlp(h), q_r, k_r


@contextmanager
def stage_blocks(visual: nn.Module, cfg: ReuseConfig, grid: tuple[int, int, int], tp: int,
                 computed: Tensor | None = None):
    """Within the block, ``visual`` (a vLLM Qwen tower) runs one video of ``grid`` (t, h, w) with the stage; the
    yielded plan's ``computed`` ((t, patches) bool, tower row order) is set by the call. ``computed`` given replaces
    the gate's decision (the speed benchmark's measured pattern)."""
    plan = VllmStagePlan(cfg, visual, grid, tp, computed)
    with wrapped(visual, "blocks", lambda block, i: _VllmStageBlock(block, i, plan)):
        yield plan


def tower_rows(visual: nn.Module, h: int, w: int) -> Tensor:
    """(h * w,) the raster index of each row of one temporal patch as vLLM's tower blocks hold it (the processor's
    merge-group order, then Qwen2.5-VL's window order): ``pattern[:, tower_rows(...)]`` takes a raster pattern to
    the rows ``stage_blocks(computed=)`` expects."""
    m = visual.spatial_merge_size
    rows = torch.arange(h * w).view(h // m, m, w // m, m).permute(0, 2, 1, 3).flatten()
    meta = visual.prepare_encoder_metadata([[1, h, w]])
    if "window_index" in meta:
        rows = rows.view(-1, m * m)[torch.as_tensor(meta["window_index"]).cpu()].flatten()
    return rows
