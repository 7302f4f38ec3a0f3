"""LLaVA-OneVision / LLaVA-Video (transformers' LlavaOnevisionForConditionalGeneration).

The stock class lays a video out as its T x h x w pooled tokens, frame-major, then one ``image_newline``; its
positions are 1-D, so the kept tokens are compacted in order, newline last. With ``positions="compact"`` (the
release's choice, our default) the shortened sequence is numbered 0, 1, 2, ...; with ``positions="original"`` every
kept token and every text token keeps the 1-D position it had in the full sequence (as Qwen's kept tokens keep
their M-RoPE positions), and decoding continues after the full sequence's last position.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext

import torch
from torch import Tensor
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..types import Pruned, VideoTokens
from .handle import PruneHandle, VideoShape, merge_chunk_shares, timed
from .sequence import Compacted, original_positions
from .saliency import attention_received, cls_attention, hook_qk, load_siglip_head, map_head_attention, qk_from_hook

# the release's sink positions, by pooled grid (SPEC: LLaVA-OV 14x14, LLaVA-Video 13x13)
SINK_PRESETS = {(14, 14): "llava-ov", (13, 13): "llava-video"}
SALIENCY_MODES = ("auto", "map-head", "cls", "attention", "features")
SALIENCY_SOURCES = {"map-head": "siglip-map-head", "cls": "cls-attention", "attention": "attention-received",
                    "features": "feature-distinctiveness"}  # what last_stats reports for each mode


def resolve_saliency(mode: str, has_head: bool, strategy: str) -> str:
    """``auto``: the MAP head when one is given (the release's source), else CLS attention for a tower with a CLS
    token (select strategy "default" drops it from the features), else the attention each token receives."""
    if mode != "auto":
        return mode
    return "map-head" if has_head else "cls" if strategy == "default" else "attention"


def sink_preset(method: str, sinks_given: bool, grid: tuple[int, int]) -> str | None:
    """Tango gets the release's sinks for the grid it was tuned on, unless the user chose sinks."""
    preset = SINK_PRESETS.get(tuple(grid))
    return None if method != "tango" or sinks_given else preset


class LlavaOnevisionHandle(PruneHandle):
    family = "llava-onevision"

    def __init__(self, model, method: str, retention: float, *, saliency: str = "auto", siglip_head: str | None = None,
                 positions: str = "compact", llm_stage=None, encoder=None, **method_opts) -> None:
        from ..encoders.reuse import resolve_encoder

        self.encoder = resolve_encoder(encoder)  # the encoder stage (encoders/reuse.py); None: the stock tower
        if positions not in ("compact", "original"):
            raise ValueError(f"positions must be 'compact' (the release's) or 'original', got {positions!r}")
        self.position_mode = positions
        if saliency not in SALIENCY_MODES:
            raise ValueError(f"saliency must be auto, map-head, cls, attention or features, got {saliency!r}")
        if saliency == "map-head" and siglip_head is None:
            raise ValueError("saliency='map-head' needs siglip_head=PATH (a local SigLIP checkpoint with its head)")
        self.saliency = saliency
        tower = model.model.vision_tower
        self.tower = getattr(tower, "vision_model", tower)
        self.head = None
        if siglip_head is not None:
            p = next(model.parameters())
            self.head = load_siglip_head(siglip_head, p.dtype, p.device)
        self.sinks_given = "sink_indices" in method_opts
        handle_opts = {k: method_opts.pop(k) for k in ("chunk_frames", "max_carry") if k in method_opts}
        self.method_opts = method_opts  # the method's own options (llm_stage is the handle's)
        super().__init__(model, method, retention, llm_stage=llm_stage, **handle_opts, **method_opts)
        self._pruners: dict = {}

    def _pruner_for(self, grid: tuple[int, int]):
        preset = sink_preset(self.method, self.sinks_given, grid)
        if preset is None:
            return self.pruner
        if preset not in self._pruners:
            from ..methods import get_method

            self._pruners[preset] = get_method("tango")(retention=self.retention, sink_indices=preset, **self.method_opts)
        return self._pruners[preset]

    def _inputs(self, kwargs: dict):
        """Pop the video inputs: (pixels as given, one (T, C, H, W) clip per video, timestamps, layer, strategy,
        the pooled grid's (h, w))."""
        cfg = self.model.config
        pv = kwargs.pop("pixel_values_videos")
        times = kwargs.pop("video_timestamps", None)
        layer = kwargs.pop("vision_feature_layer", cfg.vision_feature_layer)
        strategy = kwargs.pop("vision_feature_select_strategy", cfg.vision_feature_select_strategy)
        clips = list(pv) if isinstance(pv, (list, tuple)) else [pv[b] for b in range(pv.shape[0])]
        if times is not None and len(times) != len(clips):
            raise ValueError(f"video_timestamps has {len(times)} entries for {len(clips)} videos; pass one (T,) per video")
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size
        return pv, clips, times, layer, strategy, (math.ceil(side / 2), math.ceil(side / 2))

    @torch.no_grad()
    def encode_chunked(self, kwargs: dict, ctx: dict):
        _, clips, times, layer, strategy, (h, w) = self._inputs(kwargs)
        shapes, kept, sources, ctx["prune_s"] = [], [], [], []
        for b, clip in enumerate(clips):
            stream, seconds, src = self.stream((h, w)), 0.0, ""
            ts = None if times is None else torch.as_tensor(times[b], dtype=torch.float32)
            start, sizes = len(ctx.get("encoder_computed", [])), []
            for s in range(0, clip.shape[0], self.chunk_frames):
                # with the encoder stage each chunk is its own stage call: its first frame is a key frame, and only
                # one chunk's states are ever held
                f, sal, src = self._encode_frames(clip[s : s + self.chunk_frames], layer, strategy, ctx)
                sizes.append(f.shape[0])
                t = time.perf_counter()
                stream.push(VideoTokens(f, sal, (f.shape[0], h, w), None if ts is None else ts[s : s + f.shape[0]]))
                seconds += time.perf_counter() - t
            merge_chunk_shares(ctx, start, sizes)
            t = time.perf_counter()
            kept.append(stream.finish())
            ctx["prune_s"].append(seconds + time.perf_counter() - t)
            shapes.append(VideoShape((clip.shape[0], h, w)))
            sources.append(src)
        return shapes, kept, sources

    def stream(self, hw: tuple[int, int]):
        from ..stream import TangoStream

        return TangoStream(self._pruner_for(hw).config, max_carry=self.max_carry)

    @torch.no_grad()
    def encode(self, kwargs: dict, ctx: dict) -> tuple[list[VideoTokens], list[str]]:
        """Videos come as the processor's (B, T, C, H, W) tensor, or as a list of (T_i, C, H, W) tensors when
        their lengths differ (the stock class cannot take those; with pruning they can share a batch)."""
        pv, clips, times, layer, strategy, (h, w) = self._inputs(kwargs)
        if isinstance(pv, (list, tuple)) or self.encoder is not None:  # the stage refers frames to their own video's
            encoded = [self._encode_frames(c, layer, strategy, ctx) for c in clips]
        else:  # one tower call for the whole batch
            f, s, src = self._encode_frames(pv.flatten(0, 1), layer, strategy, ctx)
            T = pv.shape[1]
            encoded = [(f[b * T : (b + 1) * T], None if s is None else s[b * T : (b + 1) * T], src) for b in range(len(clips))]
        videos, sources = [], []
        for b, (f, s, src) in enumerate(encoded):
            ts = None if times is None else torch.as_tensor(times[b], dtype=torch.float32)
            videos.append(VideoTokens(f, s, (f.shape[0], h, w), ts))
            sources.append(src)
        return videos, sources

    def _encode_frames(self, frames, layer, strategy, ctx: dict):
        """(T, C, H, W) pixels -> pooled projected features (T, L, D), saliency (T, L) or None, its source."""
        inner = self.model.model
        layers = [layer] if isinstance(layer, int) else list(layer)
        # the map's layer keeps the q/k it computes in the forward: the map shares the tower's projections
        mode = resolve_saliency(self.saliency, self.head is not None, strategy)
        block = self._block(layers[-1]) if mode in ("cls", "attention") and self.encoder is None else None
        pixels = frames.to(next(self.tower.parameters()).dtype)
        if self.encoder is not None:  # saliency from the stage's states (a reused token: its key frame's)
            hs, computed = self._stage(pixels, set(layers) | {layers[-1] - 1})
            ctx.setdefault("encoder_computed", []).append(float(computed.float().mean()))
            got = None
        else:
            with nullcontext({}) if block is None else hook_qk(block) as got:
                hs = inner.vision_tower(pixels, output_hidden_states=True, return_dict=True).hidden_states
        sel = torch.cat([hs[i] for i in layers], dim=-1)
        if strategy == "default":
            sel = sel[:, 1:]
        feats = inner.apply_pooling(inner.multi_modal_projector(sel))
        sal, source = timed(ctx, "saliency_s", self._saliency, hs, layers[-1], strategy, got)
        if sal is not None:
            sal = inner.apply_pooling(sal.unsqueeze(-1).to(feats.dtype)).squeeze(-1).float()
        return feats, sal, source

    def _stage(self, pixels, keep: set[int]):
        """The encoder stage on one video's frames: (hidden states, computed mask)."""
        from ..encoders import reuse

        return reuse.encode(self.tower, pixels, self.encoder, keep=keep)

    def _blocks(self):
        enc = self.tower.encoder
        return getattr(enc, "layers", None) or enc.layer  # CLIP/SigLIP name them layers, DINOv2 layer

    def _block(self, layer: int):
        """The encoder layer whose output is hidden_states[layer] (hidden_states[i] is the output of layer i - 1)."""
        idx = layer if layer >= 0 else len(self._blocks()) + 1 + layer
        return self._blocks()[idx - 1]

    def _saliency(self, hs, layer: int, strategy: str, got: dict | None = None):
        mode = resolve_saliency(self.saliency, self.head is not None, strategy)
        if mode == "features":
            return None, SALIENCY_SOURCES[mode]
        idx = layer if layer >= 0 else len(hs) + layer
        if mode == "map-head":
            head, post_ln = self.head
            s = map_head_attention(head, post_ln, hs[idx])
            return (s[:, 1:] if strategy == "default" else s), "siglip-map-head"
        block = self._block(idx)
        qk = qk_from_hook(block, got)  # None: recompute from the layer's input
        if mode == "cls":
            return cls_attention(block, hs[idx - 1], qk=qk), "cls-attention"
        s = attention_received(block, hs[idx - 1], qk=qk)
        return (s[:, 1:] if strategy == "default" else s), "attention-received"

    def assemble(self, videos: list[VideoTokens], kept: list[Pruned], kwargs: dict, ctx: dict):
        newline = self.model.model.image_newline
        rows = [torch.cat([k.features, newline[None].to(k.features)]) for k in kept]
        pooled = torch.cat(rows).unsqueeze(0)
        full = [v.num_tokens + 1 for v in videos]
        short = [k.num_kept + 1 for k in kept]
        return {"mm_encoder_outputs": {"video": BaseModelOutputWithPooling(pooler_output=pooled)}}, full, short

    def positions(self, c: Compacted, input_ids: Tensor, attention_mask: Tensor | None, kept: list[Pruned],
                  kwargs: dict, ctx: dict) -> dict:
        if self.position_mode == "compact":
            return {}
        given = kwargs.get("position_ids")
        if isinstance(given, Tensor) and given.shape == input_ids.shape:
            full_pos = given
        elif ctx["generating"] and attention_mask is not None:  # as the stock generate numbers a padded batch
            full_pos = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        else:  # as the stock forward does
            full_pos = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        pos = original_positions(c, full_pos, self.video_token_id(), [k.index for k in kept], ctx["full_lengths"])
        return {"position_ids": pos}

    def prune_one(self, vt: VideoTokens) -> Pruned:
        return self._pruner_for(vt.grid[1:])(vt)
