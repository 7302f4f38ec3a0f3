"""LLaVA-OneVision served pruned through vLLM: a subclass of vLLM's model, registered under the stock architecture.

With pruning on (``TANGO_PRUNE_METHOD`` set and ``--video-pruning-rate`` > 0) a video's prompt holds K + 1
placeholders instead of T * h * w + 1 (K = ``kept_count`` of its pooled grid, retention = 1 - rate), and the video
embedding path returns exactly those rows: the K kept (merged) pooled tokens, frame-major, then the one
``image_newline``, as our Hugging Face adapter (``tango_prune.apply``, ``positions="compact"``) feeds the LLM. vLLM
numbers the shortened prompt 0, 1, 2, ... itself (LLaVA-OV's positions are 1-D), which is the compact numbering, so
nothing about positions changes. Otherwise every call goes to the stock code.

vLLM does not refuse ``--video-pruning-rate`` for models without pruning support (it only checks the method against
a model's own ``supported_video_pruning_methods`` when it declares any); stock LLaVA-OV ignores it. The class does not
declare ``SupportsMultiModalPruning`` (its ``recompute_mrope_positions`` is for M-RoPE; 1-D positions need nothing);
an instance that prunes says ``supports_multimodal_pruning`` so that vLLM's runner encodes its videos one at a time,
as it does for EVS: the scheduler budgets the encoder by placeholder counts, which pruning makes ~1/retention times
smaller than the tower's real work.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor
from vllm.model_executor.models.llava_onevision import (
    LlavaOnevisionDummyInputsBuilder,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionMultiModalProcessor,
    LlavaOnevisionProcessingInfo,
)
from vllm.logger import init_logger
from vllm.multimodal import MULTIMODAL_REGISTRY

from ...models.llava_ov import SALIENCY_MODES, SALIENCY_SOURCES, resolve_saliency, sink_preset
from ...models.saliency import attention_received, cls_attention, load_siglip_head, map_head_attention
from ...types import Pruned, VideoTokens
from .debug_dump import debug_dir, dump, dump_chunks
from .runtime import announce, log_saliency
from .vllm_names import require_attrs, tp_size
from .encoder_stage_llava import stage_layers
from .settings import Settings, kept_count, make_pruner, read_settings

logger = init_logger("vllm.tango_prune")
ARCH = "LlavaOnevisionForConditionalGeneration"


def pruning_settings(mm_config) -> tuple[Settings | None, float]:
    """(settings, retention), or (None, 1.0) when pruning is off: no method set, or vLLM's
    ``video_pruning_rate`` unset or 0. Read where it is needed, so that the frontend's processor and the engine's
    model decide alike from the same environment and config."""
    settings = read_settings()
    # None (vLLM's "unset") and 0 both mean no pruning; a missing attribute raises (vllm_names.NEEDS)
    rate = (None if mm_config is None else mm_config.video_pruning_rate) or 0.0
    if settings is None or rate <= 0.0:
        return None, 1.0
    return settings, 1.0 - float(rate)


def saliency_options(settings: Settings) -> tuple[str, str | None]:
    """(saliency mode, siglip_head path) from the adapter options, checked as the HF adapter checks them."""
    opts = settings.adapter_options
    mode, head = opts.get("saliency", "auto"), opts.get("siglip_head")
    if mode not in SALIENCY_MODES:
        raise ValueError(f"saliency={mode!r} is not available for LLaVA-OneVision; use one of {', '.join(SALIENCY_MODES)}")
    if mode == "map-head" and head is None:
        raise ValueError("saliency='map-head' needs siglip_head=PATH (a local SigLIP checkpoint with its head)")
    return mode, head


class TangoLlavaOnevisionProcessingInfo(LlavaOnevisionProcessingInfo):
    """Stock info, except that a pruned video reserves K kept + 1 newline placeholders. The stock processor's
    prompt replacement and the profiler's dummy video both size themselves through ``get_num_video_tokens``."""

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        # read once: the profiler asks once per candidate frame count, the processor once per video
        self._tango_active = pruning_settings(ctx.get_mm_config())

    def get_num_video_tokens(self, *, image_width: int, image_height: int, num_frames: int) -> int:
        settings, retention = self._tango_active
        if settings is None:
            return super().get_num_video_tokens(image_width=image_width, image_height=image_height,
                                                num_frames=num_frames)
        per_frame = self._get_num_frame_tokens(image_width=image_width, image_height=image_height)
        return kept_count(settings, per_frame, num_frames, retention) + 1


@MULTIMODAL_REGISTRY.register_processor(
    LlavaOnevisionMultiModalProcessor,
    info=TangoLlavaOnevisionProcessingInfo,
    dummy_inputs=LlavaOnevisionDummyInputsBuilder,
)
class TangoLlavaOnevision(LlavaOnevisionForConditionalGeneration):
    """vLLM's LLaVA-OneVision whose video embeddings are pruned by a tango-prune method (images stay stock)."""

    tango_prune_settings: Settings | None = None  # what the plugin's CPU runner looks for (None: stock)

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        settings, self._tango_retention = pruning_settings(self.multimodal_config)
        self.tango_prune_settings = settings
        self._tango_pruners: dict[tuple[int, int], object] = {}
        self._tango_head = None
        if settings is None:
            return
        # the encoder stage (encoder_stage_llava.py); a measured pattern may replace its gate (benchmarks)
        self._tango_encoder, self._tango_encoder_pattern = settings.encoder, settings.options.get("encoder_pattern")
        self.supports_multimodal_pruning = True  # this instance only: one video per tower call (module docstring)
        self.tango_saliency, head = saliency_options(settings)
        block = self._tango_block()  # what the saliency reads of vLLM's tower: present, or start-up stops here
        require_attrs(block, ("self_attn", "layer_norm1"), f"{type(block).__name__} (LLaVA-OV's vision layer)")
        require_attrs(block.self_attn, ("qkv_proj", "num_heads_per_partition", "num_heads", "scale", "tp_size"),
                      f"{type(block.self_attn).__name__} (LLaVA-OV's vision attention)")
        if head is not None:  # the release's saliency: SigLIP's attention-pooling head (LLaVA ships without it)
            p = next(self.vision_tower.parameters())
            self._tango_head = load_siglip_head(head, p.dtype, p.device)

        announce()
        logger.info("tango-prune: %s prunes videos with %s, keeping %.4g of each video's tokens, saliency %s",
                    type(self).__name__, settings.describe(), self._tango_retention, self.tango_saliency)

    # -- the video path ------------------------------------------------------------------------------------
    def _process_video_pixels(self, inputs):
        if self.tango_prune_settings is None:
            return super()._process_video_pixels(inputs)
        pixels = inputs["pixel_values_videos"]
        if self.tango_prune_settings.chunk_frames:
            return [self._tango_encode_chunked(v) for v in pixels]  # a (B, T, ...) tensor iterates per video too
        # one tower call for all videos of the batch, as the stock path does; a batched tensor is (B, T, C, H, W)
        if isinstance(pixels, Tensor):
            frames, flat = [pixels.shape[1]] * pixels.shape[0], pixels.flatten(0, 1)
        else:
            frames, flat = [v.shape[0] for v in pixels], torch.cat(list(pixels))
        feats, sal = self._tango_encode(flat) if self._tango_encoder is None else self._tango_encode_staged(pixels)
        side = math.isqrt(feats.shape[1])  # the pooled grid is square: ceil(patches per side / 2)
        out = []
        for f, s in zip(feats.split(frames), [None] * len(frames) if sal is None else sal.split(frames)):
            kept = self._tango_prune(VideoTokens(f, s, (f.shape[0], side, side)))
            out.append(torch.cat([kept.features, self.image_newline[None].to(kept.features)]))
        return out

    def _tango_encode_chunked(self, frames: Tensor) -> Tensor:
        """``chunk_frames``: one video's (T, C, H, W) frames through the tower that many at a time (each frame is
        encoded alone, so a chunk's rows are the whole call's), each chunk pruned as it comes (stream.TangoStream);
        only kept rows are held. Returns the kept rows, then the newline."""
        c = self.tango_prune_settings.chunk_frames
        stream, seen = None, [] if debug_dir() else None
        for s in range(0, frames.shape[0], c):
            # with the encoder stage each chunk is its own stage call (its first frame a key frame)
            feats, sal = self._tango_encode(frames[s:s + c]) if self._tango_encoder is None \
                else self._tango_encode_staged([frames[s:s + c]])
            side = math.isqrt(feats.shape[1])
            if stream is None:
                stream = self._tango_settings((side, side)).make_stream(self._tango_retention)
            chunk = VideoTokens(feats, sal, (feats.shape[0], side, side))
            stream.push(chunk)
            if seen is not None:
                seen.append(chunk)
        kept = stream.finish()
        self._tango_check(kept)
        if seen is not None:
            dump_chunks(seen, kept, self._tango_source(), self._tango_retention)
        return torch.cat([kept.features, self.image_newline[None].to(kept.features)])

    def _tango_encode_staged(self, videos) -> tuple[Tensor, Tensor | None]:
        """``_tango_encode`` with the encoder stage, one video per tower call (a frame must never refer to another
        video's key frame); the videos' rows and saliency joined as the whole call's."""
        encoder = self.vision_tower.vision_model.encoder
        tp = tp_size(self._tango_block().self_attn, "SiglipAttention")
        feats, sals = [], []
        for frames in videos:
            given = None if self._tango_encoder_pattern is None else torch.load(self._tango_encoder_pattern)
            with stage_layers(encoder, self._tango_encoder, frames.shape[0], tp, given) as plan:
                f, s = self._tango_encode(frames)
            share = 1.0 if plan.computed is None else float(plan.computed.float().mean())
            logger.info("tango-prune: encoder stage: %d frames, %.4f of their tokens computed past the gate, %d key "
                        "frames", frames.shape[0], share, frames.shape[0] if plan.computed is None else plan.key.numel())
            feats.append(f)
            sals.append(s)
        return torch.cat(feats), None if any(s is None for s in sals) else torch.cat(sals)

    def _tango_encode(self, pixels: Tensor) -> tuple[Tensor, Tensor | None]:
        """(N, C, H, W) frames -> stock pooled projected features (N, L, D) and pooled saliency (N, L) or None.

        The saliency comes from the same layer and by the same rule as the HF adapter's: the layer that outputs the
        selected features (the last of ``vision_feature_layer``). Its input (and, for the MAP head, its output) is
        caught with a hook for this one call, so the tower itself runs exactly as stock."""
        strategy = self.config.vision_feature_select_strategy
        mode = self._tango_mode()
        block = self._tango_block()
        seen: dict[str, Tensor] = {}
        hooks = []
        if mode != "features":
            hooks.append(block.register_forward_pre_hook(lambda m, args: seen.__setitem__("input", args[0])))
        if mode == "map-head":
            hooks.append(block.register_forward_hook(lambda m, args, out: seen.__setitem__("output", out[0])))
        try:
            feats = self._video_pixels_to_features(self.vision_tower, pixels)  # tower, projector, pooling: stock
        finally:
            for h in hooks:
                h.remove()
        if mode == "features":
            return feats, None
        if mode == "map-head":
            head, post_ln = self._tango_head
            sal = map_head_attention(head, post_ln, seen["output"])
            sal = sal[:, 1:] if strategy == "default" else sal
        elif mode == "cls":
            sal = self._tango_all_heads(cls_attention(block, seen["input"]), block)
        else:
            sal = self._tango_all_heads(attention_received(block, seen["input"]), block)
            sal = sal[:, 1:] if strategy == "default" else sal
        # the saliency map goes through the features' own bilinear pooling, as in the HF adapter
        pooled = self.apply_pooling(sal.unsqueeze(-1).to(feats.dtype)).squeeze(-1).float()
        return feats, pooled

    def _tango_block(self):
        """The tower layer that outputs the selected features (the last of ``vision_feature_layer``)."""
        cfg = self.config
        layers = [cfg.vision_feature_layer] if isinstance(cfg.vision_feature_layer, int) else list(cfg.vision_feature_layer)
        last = layers[-1]
        idx = last if last >= 0 else cfg.vision_config.num_hidden_layers + 1 + last  # as HF hidden_states index it
        return self.vision_tower.vision_model.encoder.layers[idx - 1]

    @staticmethod
    def _tango_all_heads(sal: Tensor, block) -> Tensor:
        """Under tensor parallelism each rank sees its own heads: average over all of them, so that every rank
        keeps the same tokens."""
        attn = block.self_attn
        if tp_size(attn, "SiglipAttention") == 1:
            return sal
        from vllm.distributed import tensor_model_parallel_all_reduce

        return tensor_model_parallel_all_reduce(sal * attn.num_heads_per_partition) / attn.num_heads

    def _tango_settings(self, grid: tuple[int, int]) -> Settings:
        """The settings with the HF adapter's sink preset for this pooled grid (when the user named no sinks)."""
        settings = self.tango_prune_settings
        preset = sink_preset(settings.method, "sink_indices" in settings.options, grid)
        if preset is not None:
            settings = dataclasses.replace(settings, options={**settings.options, "sink_indices": preset})
        return settings

    def _tango_prune(self, vt: VideoTokens) -> Pruned:
        """The method on one video, with exactly as many tokens as the processor reserved placeholders for."""
        grid = vt.grid[1:]
        if grid not in self._tango_pruners:
            self._tango_pruners[grid] = make_pruner(self._tango_settings(grid), self._tango_retention)
        kept = self._tango_pruners[grid](vt)
        self._tango_check(kept)
        if debug_dir():  # the Qwen classes' debug dump, same record format
            dump(vt, kept, self._tango_source(), self._tango_retention)
        return kept

    def _tango_check(self, kept: Pruned) -> None:
        T, h, w = kept.grid
        want = kept_count(self.tango_prune_settings, h * w, T, self._tango_retention)
        if kept.num_kept != want:
            raise ValueError(f"{self.tango_prune_settings.method} kept {kept.num_kept} tokens, the prompt reserved {want}")
        log_saliency(self._tango_source(), from_tower=self._tango_mode() != "features")

    def _tango_mode(self) -> str:
        return resolve_saliency(self.tango_saliency, self._tango_head is not None,
                                self.config.vision_feature_select_strategy)

    def _tango_source(self) -> str:
        return SALIENCY_SOURCES[self._tango_mode()]


def register_llava_onevision() -> None:
    """Serve ``LlavaOnevisionForConditionalGeneration`` checkpoints with ``TangoLlavaOnevision`` (stock behaviour
    unless pruning is on). Safe to call more than once (vLLM loads plugins in every process)."""
    from vllm import ModelRegistry

    ModelRegistry.register_model(ARCH, TangoLlavaOnevision)
    got = ModelRegistry.models[ARCH].load_model_cls() if ARCH in ModelRegistry.models else None
    if got is not TangoLlavaOnevision:
        raise ValueError(f"vLLM's registry resolves {ARCH} to {got!r}, not TangoLlavaOnevision; registration failed")


__all__ = ["ARCH", "TangoLlavaOnevision", "TangoLlavaOnevisionProcessingInfo", "pruning_settings",
           "register_llava_onevision"]
