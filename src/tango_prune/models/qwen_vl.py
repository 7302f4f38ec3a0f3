"""Qwen2.5-VL, Qwen2-VL, Qwen3-VL and Qwen3.5 (transformers' Qwen2_5_VL / Qwen2VL / Qwen3VL / Qwen3_5 /
Qwen3_5MoeForConditionalGeneration).

Qwen's LLM positions are 3-D (M-RoPE): a video token sits at (t, h, w) and text after a video continues from the
video's largest position. The stock class computes them from the full placeholder layout, so we compute them the
stock way on the *original* sequence, then keep the kept tokens' own (t, h, w) and the text's own positions. The
4-row ``position_ids`` we hand over (row 0: contiguous positions of the shortened sequence, for the attention
mask; rows 1-3: M-RoPE) make decoding continue exactly where the stock model would.

Qwen3-VL differs in two ways. Its prompt gives every temporal patch its own run of placeholders after a text
timestamp ("<0.5 seconds><|vision_start|>...<|vision_end|>"), so each frame's run is cut to that frame's kept
tokens (never moved into another frame's run, where text of other times would precede it). Its tower also returns
"deepstack" features of intermediate ViT levels, which the LLM adds at the video positions of its first layers:
each level is pruned with the main features' kept rows (``core.carry``: merged rows take the mean of the tokens
they represent). Qwen3.5 (dense and MoE) is Qwen3-VL without deepstack (``Qwen3_5Handle``).
"""
from __future__ import annotations

import time

import torch
from torch import Tensor
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..core.carry import carry
from ..core.saliency import global_query
from ..types import Pruned, VideoTokens
from .handle import PruneHandle, VideoShape, merge_chunk_shares, timed
from .sequence import Compacted, kept_sources


class QwenVLHandle(PruneHandle):
    family = "qwen-vl"

    def __init__(self, model, method: str, retention: float, *, saliency: str = "auto", positions: str = "original",
                 encoder=None, **method_opts) -> None:
        from ..encoders.reuse import resolve_encoder

        self.encoder = resolve_encoder(encoder)  # the encoder stage (encoders/reuse_qwen.py); None: the stock tower
        if positions != "original":
            raise ValueError(f"positions={positions!r}: Qwen's kept tokens always keep their M-RoPE positions; "
                             "leave positions out (or pass 'original')")
        if saliency not in ("auto", "global-query", "features"):
            raise ValueError(f"saliency must be auto, global-query or features, got {saliency!r}")
        self.saliency = saliency
        super().__init__(model, method, retention, **method_opts)

    @torch.no_grad()
    def encode(self, kwargs: dict, ctx: dict) -> tuple[list[VideoTokens], list[str]]:
        pv, thw, spt, times = self._inputs(kwargs, ctx)
        feats, ctx["deepstack"], sal, source = self._tower(pv, thw, ctx) if self.encoder is None \
            else self._tower_reuse(pv, thw, ctx)
        m = self.model.model.visual.spatial_merge_size
        videos, a = [], 0
        for v, (t, h, w) in enumerate(thw.tolist()):
            hh, ww = h // m, w // m
            n = t * hh * ww
            f = feats[a : a + n].view(t, hh * ww, -1)
            s = None if sal is None else sal[a : a + n].view(t, hh * ww)
            videos.append(VideoTokens(f, s, (t, hh, ww), video_times(v, t, times, spt)))
            a += n
        return videos, [source] * len(videos)

    @torch.no_grad()
    def encode_chunked(self, kwargs: dict, ctx: dict):
        """Each video ``chunk_frames`` temporal patches at a time through the tower (its attention never crosses
        a temporal patch, so a chunk's rows are the whole call's), pruned as they come; Qwen3-VL's deepstack
        levels ride along (stream.TangoStream extras)."""
        pv, thw, spt, times = self._inputs(kwargs, ctx)
        ctx["carried"] = []
        m = self.model.model.visual.spatial_merge_size
        c = self.chunk_frames
        shapes, kept, sources, ctx["prune_s"], row = [], [], [], [], 0
        for v, (t, h, w) in enumerate(thw.tolist()):
            hh, ww = h // m, w // m
            stream, seconds, source = self.stream((hh, ww)), 0.0, ""
            ts = video_times(v, t, times, spt)
            start, sizes = len(ctx.get("encoder_computed", [])), []
            # with the encoder stage each chunk is its own stage call: its first temporal patch is a key, and only
            # one chunk's states are ever held
            tower = self._tower if self.encoder is None else self._tower_reuse
            for s in range(0, t, c):
                n = min(c, t - s)
                part = pv[row + s * h * w : row + (s + n) * h * w]
                grid = torch.tensor([[n, h, w]], dtype=thw.dtype, device=thw.device)
                feats, deep, sal, source = tower(part, grid, ctx)
                sizes.append(n)
                tic = time.perf_counter()
                stream.push(VideoTokens(feats.view(n, hh * ww, -1), None if sal is None else sal.view(n, hh * ww),
                                        (n, hh, ww), None if ts is None else ts[s : s + n]), extras=deep or ())
                seconds += time.perf_counter() - tic
            merge_chunk_shares(ctx, start, sizes)
            tic = time.perf_counter()
            kept.append(stream.finish())
            ctx["prune_s"].append(seconds + time.perf_counter() - tic)
            ctx["carried"].append(stream.carried)
            shapes.append(VideoShape((t, hh, ww)))
            sources.append(source)
            row += t * h * w
        return shapes, kept, sources

    @staticmethod
    def _inputs(kwargs: dict, ctx: dict):
        """Pop the video inputs: pixels, grid (t, h, w) per video, seconds per temporal patch, timestamps."""
        pv = kwargs.pop("pixel_values_videos")
        thw = kwargs.pop("video_grid_thw", None)
        if thw is None:
            raise ValueError("Qwen video inputs need video_grid_thw (the processor returns it with pixel_values_videos)")
        spt = kwargs.pop("second_per_grid_ts", None)
        ctx.update(video_grid_thw=thw, second_per_grid_ts=spt)
        return pv, thw, spt, kwargs.pop("video_timestamps", None)

    def _tower(self, pv: Tensor, thw: Tensor, ctx: dict):
        """One tower call: merged features (N, D), deepstack levels (Qwen3-VL) or None, saliency (N,) or None, and
        the saliency's source."""
        visual = self.model.model.visual
        captured = {}
        mode = "features" if self.saliency == "features" else "global-query"
        hook = None
        if mode == "global-query":
            def grab(module, args, kw):  # the last block's input: our one attention map is computed from it
                captured["h"] = args[0] if args else kw["hidden_states"]
                captured["pe"] = kw.get("position_embeddings")
            hook = visual.blocks[-1].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            out = visual(pv.type(visual.dtype), grid_thw=thw)
        finally:
            if hook is not None:
                hook.remove()
        deep = getattr(out, "deepstack_features", None)  # Qwen3-VL: one (N, D) tensor per ViT level
        sal = timed(ctx, "saliency_s", global_query_saliency, visual, captured, thw) \
            if mode == "global-query" and captured.get("pe") else None
        return out.pooler_output, deep, sal, "qwen-global-query" if sal is not None else "feature-distinctiveness"

    def _tower_reuse(self, pv: Tensor, thw: Tensor, ctx: dict):
        """``_tower`` with the encoder stage, one video per tower call (a temporal patch must never refer to
        another video's key). Puts each video's computed share in ctx["encoder_computed"]."""
        from ..encoders.reuse_qwen import reuse_blocks

        visual = self.model.model.visual
        parts, row = [], 0
        for t, h, w in thw.tolist():
            with reuse_blocks(visual, self.encoder, (t, h, w), self.reuse_pattern(t, h, w)) as plan:
                parts.append(self._tower(pv[row : row + t * h * w], thw.new_tensor([[t, h, w]]), ctx))
            share = 1.0 if plan.computed is None else float(plan.computed.float().mean())
            ctx.setdefault("encoder_computed", []).append(share)
            row += t * h * w
        feats = torch.cat([p[0] for p in parts])
        deep = None if parts[0][1] is None else [torch.cat(lv) for lv in zip(*[p[1] for p in parts])]
        sal = None if any(p[2] is None for p in parts) else torch.cat([p[2] for p in parts])
        return feats, deep, sal, parts[0][3]

    def reuse_pattern(self, t: int, h: int, w: int) -> Tensor | None:
        """The stage's computed pattern in the tower's row order, replacing its gate (None: the gate decides; the
        speed benchmark gives one measured on real weights)."""
        return None

    def encode_given(self, videos, kwargs: dict, ctx: dict):
        thw = kwargs.pop("video_grid_thw", None)
        if thw is None:
            raise ValueError("Qwen video inputs need video_grid_thw, also with video_tokens=")
        ctx.update(video_grid_thw=thw, second_per_grid_ts=kwargs.pop("second_per_grid_ts", None))
        return super().encode_given(videos, kwargs, ctx)

    def assemble(self, videos: list[VideoTokens], kept: list[Pruned], kwargs: dict, ctx: dict):
        pooled = tuple(k.features for k in kept)
        full = [v.num_tokens for v in videos]
        short = [k.num_kept for k in kept]
        return {"mm_encoder_outputs": {"video": BaseModelOutputWithPooling(pooler_output=pooled)}}, full, short

    def positions(self, c: Compacted, input_ids: Tensor, attention_mask: Tensor | None, kept: list[Pruned],
                  kwargs: dict, ctx: dict) -> dict:
        inner = self.model.model
        tt = kwargs.get("mm_token_type_ids")  # still the caller's: per-position inputs are compacted after this
        if tt is None or tt.shape != input_ids.shape:
            tt = (input_ids == self.video_token_id()).int() * 2
            if getattr(self.model.config, "image_token_id", None) is not None:
                tt = tt + (input_ids == self.model.config.image_token_id).int()
        mrope, _ = inner.get_rope_index(
            input_ids, mm_token_type_ids=tt, image_grid_thw=kwargs.get("image_grid_thw"),
            video_grid_thw=ctx["video_grid_thw"], second_per_grid_ts=ctx["second_per_grid_ts"],
            attention_mask=attention_mask,
        )
        B, S2 = c.input_ids.shape
        ok = c.source >= 0
        # each surviving placeholder takes its kept token's own (t, h, w), not the position of its rank in the run
        runs = ctx.get("run_index", [k.index for k in kept])
        src = kept_sources(c, self.video_token_id(), runs, ctx["full_lengths"], trailing=False)
        rows = torch.arange(B, device=ok.device)[:, None].expand(B, S2)
        kept_rope = torch.zeros(3, B, S2, dtype=mrope.dtype, device=mrope.device)
        kept_rope[:, ok] = mrope[:, rows[ok], src[ok]]
        text = (c.attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        # the stock generate derives decode positions from these deltas; keep them consistent for the caller
        return {"position_ids": torch.cat([text[None], kept_rope], dim=0)}


def video_times(v: int, t: int, times, spt) -> Tensor | None:
    """Video ``v``'s (t,) temporal patch times: the caller's, else from its seconds per patch, else None."""
    if times is not None:
        return torch.as_tensor(times[v], dtype=torch.float32)
    if spt is not None:  # a temporal patch spans its frames: their mean time
        return patch_times(t, float(spt[v]))
    return None


def patch_times(t: int, step: float) -> Tensor:
    """(t,) seconds of Qwen's temporal patches, ``step`` seconds each: a patch spans its frames, so it sits at
    their mean time (two frames: a quarter step in)."""
    return torch.arange(t, dtype=torch.float32) * step + step / 4


@torch.no_grad()
def global_query_saliency(visual, captured: dict, thw: Tensor) -> Tensor:
    """SPEC step 0 for Qwen's towers from transformers' modules: the last block's rotated queries and keys, then
    ``core.saliency.global_query``. Returns (N_merged,) in the merged tokens' raster order."""
    import sys

    # the tower's own rotary helper (Qwen2-VL, Qwen2.5-VL and Qwen3-VL each define one in their modeling file)
    apply_rotary_pos_emb_vision = sys.modules[type(visual).__module__].apply_rotary_pos_emb_vision
    blk = visual.blocks[-1]
    blk = getattr(blk, "block", blk)  # under the encoder stage, the block inside its wrapper (encoders/reuse_qwen.py)
    h = captured["h"]
    N = h.shape[0]
    q, k, _ = blk.attn.qkv(blk.norm1(h)).reshape(N, 3, blk.attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = captured["pe"]
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    order = None
    if getattr(visual, "window_size", None):  # Qwen2.5-VL runs in window order; back to raster order
        from transformers.vision_utils import get_vision_window_index

        window_index, _ = get_vision_window_index(thw, visual.spatial_merge_size, visual.window_size, visual.patch_size)
        order = torch.argsort(window_index)
    return torch.cat([s.flatten() for s in global_query(q, k, thw.tolist(), visual.spatial_merge_size, order)])

class Qwen3VLHandle(QwenVLHandle):
    family = "qwen3-vl"

    def encode_given(self, videos, kwargs: dict, ctx: dict):
        raise ValueError("video_tokens= is not supported on Qwen3-VL: the deepstack features it also needs are not "
                         "part of VideoTokens; pass pixel_values_videos")

    def assemble(self, videos: list[VideoTokens], kept: list[Pruned], kwargs: dict, ctx: dict):
        from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

        frame_runs(videos, kept, ctx)
        if "carried" in ctx:  # chunk by chunk: the stream carried each level along (video -> level -> rows)
            levels = [list(lv) for lv in zip(*ctx["carried"])]
        else:
            levels, a = [[] for _ in ctx["deepstack"]], 0
            for v, k in zip(videos, kept):
                for lv, feat in zip(levels, ctx["deepstack"]):
                    lv.append(carry(k, feat[a : a + v.num_tokens]))
                a += v.num_tokens
        out = BaseModelOutputWithDeepstackFeatures(pooler_output=tuple(k.features for k in kept),
                                                   deepstack_features=[tuple(lv) for lv in levels])
        return {"mm_encoder_outputs": {"video": out}}, [v.num_tokens for v in videos], [k.num_kept for k in kept]


class Qwen3_5Handle(Qwen3VLHandle):
    """Qwen3.5, dense and MoE (transformers' Qwen3_5 / Qwen3_5MoeForConditionalGeneration). Its tower is Qwen3-VL's
    (same blocks, rotary helper and merger), its prompt has Qwen3-VL's run per temporal patch and its
    ``get_rope_index`` splits each video into one-frame grids as Qwen3-VL's does, so saliency, per-frame runs and
    positions are Qwen3VLHandle's. What differs: the tower has no deepstack levels (it returns the merged features
    only, and the LLM takes a plain ``BaseModelOutputWithPooling``), so nothing else needs pruning and
    ``video_tokens=`` works. The hybrid LLM (gated delta net and full attention layers) and the MoE feed-forward
    sit behind the stock forward and need nothing here."""

    family = "qwen3.5"
    encode_given = QwenVLHandle.encode_given

    def assemble(self, videos: list[VideoTokens], kept: list[Pruned], kwargs: dict, ctx: dict):
        frame_runs(videos, kept, ctx)
        return QwenVLHandle.assemble(self, videos, kept, kwargs, ctx)


def frame_runs(videos: list[VideoTokens], kept: list[Pruned], ctx: dict) -> None:
    """Qwen3-VL / Qwen3.5 give every temporal patch its own placeholder run: size each run to that frame's kept
    tokens (ctx run_full, run_short) and keep each kept token's index within its frame (run_index)."""
    run_full, run_short, run_index = [], [], []
    for v, k in zip(videos, kept):
        T, H, W = v.grid
        n = H * W
        frame = torch.div(k.index, n, rounding_mode="floor")
        counts = torch.bincount(frame, minlength=T).tolist()
        run_full += [n] * T
        run_short += counts
        run_index += list(torch.split(k.index - frame * n, counts))
    ctx.update(run_full=run_full, run_short=run_short, run_index=run_index)
