"""Qwen2.5-VL and Qwen3-VL (dense, MoE) for vLLM with tango-prune's pruner in place of EVS / VidCom2.

vLLM's Qwen models prune in one overridable step, ``_postprocess_video_embeds_evs`` (called only when
``--video-pruning-rate`` > 0): it receives each video's encoder output and returns the kept rows with their
M-RoPE positions appended as extra channels, which the runner strips off in ``recompute_mrope_positions``. Our
subclasses override that step (and ``_process_video_input``, to capture the saliency while the tower runs):

  * the kept rows are exactly ``settings.kept_count`` (the count the patched processor reserved), sorted by
    position, carrying the method's (possibly merged) features;
  * every kept token keeps the (t, h, w) position the unpruned video would have given it, so text after the
    video continues where the stock model would continue;
  * saliency is the per-frame global query of the last ViT block (``core.saliency.global_query``), the source the
    Hugging Face adapter uses; with ``saliency: features`` in the options, precomputed ``video_embeds`` inputs or
    a data-parallel tower it is None and the method falls back to its feature-only score (logged once);
  * Qwen3-VL's deepstack features travel in the same rows as the main features (the tower concatenates them on
    the channel axis). As in the Hugging Face adapter, the pruner sees the main features only (vLLM's EVS scores
    the concatenation; we keep one selection rule for both engines), and every deepstack level keeps the same
    rows, a merged row taking the level's mean over the tokens it represents (``core.carry``).

Selection depends only on the video (features, saliency, grid, timestamps), never on the prompt, as vLLM's
encoder cache (keyed by the media hash) requires. ``TANGO_PRUNE_DEBUG_DIR``: save each pruned video's inputs
and output there (for tests and debugging).
"""
from __future__ import annotations


import torch
from torch import Tensor
from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration, Qwen3VLMultiModalProcessor
from vllm.model_executor.models.qwen3_vl_moe import Qwen3VLMoeForConditionalGeneration
from vllm.multimodal.video_prune.evs import compute_mrope_for_media

from ...core.carry import carry
from ...types import Pruned, VideoTokens
from ...core.saliency import global_query
from ...models.qwen_vl import patch_times
from . import positions
from .saliency import capture_qk
from .runtime import active_settings, announce, dump, log_once
from .settings import make_pruner, read_settings


class _TangoVideoPruning:
    """What the Qwen subclasses share: settings, pruner, saliency capture, one video's pruning."""

    tango_prune_settings = None

    def _tango_setup(self) -> None:
        announce()
        settings = active_settings() or read_settings()
        if settings is None:
            raise RuntimeError("tango-prune's model class is registered but TANGO_PRUNE_METHOD is unset in this "
                               "process; set it for every vLLM process (export it before starting vLLM)")
        self.tango_prune_settings = settings
        self._tango_pending: list[Tensor | None] | None = None
        self._tango_source = "none"
        rate = self.video_pruning_rate
        if not self.is_multimodal_pruning_enabled:
            log_once("off", "tango-prune: %s loaded, but --video-pruning-rate is %s: videos are not pruned",
                     type(self).__name__, rate)
            self._tango_pruner = None
            return
        self._tango_retention = 1.0 - float(rate)
        self._tango_pruner = make_pruner(settings, self._tango_retention)
        want = settings.adapter_options.get("saliency", "auto")
        if want not in ("auto", "global-query", "features"):
            raise ValueError(f"TANGO_PRUNE_OPTIONS saliency={want!r} is not available for Qwen models; "
                             f"use auto, global-query or features")
        self._tango_global_query = want != "features"
        log_once("on", "tango-prune: %s prunes videos with %s, keeping %.4g of each video's tokens",
                 type(self).__name__, settings.describe(), self._tango_retention)

    # -- saliency --------------------------------------------------------------------------------------------
    def _tango_order(self, grid: list[list[int]]) -> Tensor | None:
        """Permutation from the tower's token order to raster order (None: already raster)."""
        return None

    def _process_video_input(self, video_input):
        self._tango_pending = None
        reason = None
        if self._tango_pruner is None:
            return super()._process_video_input(video_input)
        if not self._tango_global_query:
            reason = "saliency=features requested"
        elif video_input["type"] != "pixel_values_videos":
            reason = "video given as precomputed embeddings"
        elif getattr(self, "use_data_parallel", False):
            reason = "data-parallel vision tower"
        if reason is not None:
            self._tango_source = f"feature-distinctiveness ({reason})"
            return super()._process_video_input(video_input)
        attn = self.visual.blocks[-1].attn
        with capture_qk(attn.attn) as cap:
            out = super()._process_video_input(video_input)
        if len(cap["q"]) != 1:  # the tower ran in pieces we cannot align; fall back rather than guess
            self._tango_source = f"feature-distinctiveness (last block called {len(cap['q'])} times)"
            return out
        grid = video_input["video_grid_thw"].tolist()
        tp = getattr(attn, "tp_size", 1)
        reduce = None
        if tp > 1:
            from vllm.distributed import tensor_model_parallel_all_reduce as reduce
        self._tango_pending = global_query(
            cap["q"][0].flatten(0, 1), cap["k"][0].flatten(0, 1), grid, self.visual.spatial_merge_size,
            order=self._tango_order(grid), all_reduce=reduce,
            total_heads=attn.num_attention_heads_per_partition * tp)
        self._tango_source = "qwen-global-query"
        return out

    def _tango_take_saliency(self, n: int) -> list[Tensor | None]:
        pending, self._tango_pending = self._tango_pending, None
        if pending is None or len(pending) != n:
            return [None] * n
        return pending

    # -- one video -------------------------------------------------------------------------------------------
    def _tango_prune(self, emb: Tensor, size: list[int], saliency: Tensor | None, times: Tensor) -> Pruned:
        t, h, w = (int(x) for x in size)
        m = self.visual.spatial_merge_size
        grid = (t, h // m, w // m)
        vt = VideoTokens(emb.reshape(t, grid[1] * grid[2], emb.shape[-1]),
                         None if saliency is None else saliency.to(emb.device), grid, times)
        out = self._tango_pruner(vt)
        # the fallback's reason when one was recorded; a saliency that went missing otherwise is just the fallback
        source = self._tango_source if saliency is not None or self._tango_source.startswith("feature") \
            else "feature-distinctiveness"
        log_once(f"saliency:{source}", "tango-prune: saliency source: %s", source)
        dump(vt, out, source, self._tango_retention)
        return out


class TangoQwen2_5_VL(_TangoVideoPruning, Qwen2_5_VLForConditionalGeneration):
    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._tango_setup()

    def _tango_order(self, grid):
        # vLLM runs the tower in window order and undoes it after the merger with these indices
        return self.visual.prepare_encoder_metadata(grid)["reverse_indices"]

    def _postprocess_video_embeds_evs(self, video_embeds_split, video_input):
        grid = video_input["video_grid_thw"].tolist()
        spt = video_input.get("second_per_grid_ts")
        if spt is None:
            raise ValueError("second_per_grid_ts is required when video_pruning_rate > 0 (tango-prune)")
        tps = self.config.vision_config.tokens_per_second
        merge = self.visual.spatial_merge_size
        out = []
        for emb, size, sal, step in zip(video_embeds_split, grid, self._tango_take_saliency(len(grid)),
                                        spt.tolist()):
            # as models.qwen_vl: a temporal patch sits at the mean time of its frames (for ST-RoPE)
            times = patch_times(size[0], step)
            kept = self._tango_prune(emb, size, sal, times)
            # the positions the unpruned video gives (vLLM's own get_mrope_input_positions uses the float step
            # too), plus the grid-width channel recompute_mrope_positions reads
            pos = compute_mrope_for_media(size, merge, tokens_per_second=tps, video_second_per_grid=step)
            pos = pos.to(emb.device)[kept.index]
            out.append(torch.cat([kept.features.to(emb.dtype), pos.to(emb.dtype)], dim=1))
        return tuple(out)


class _TangoQwen3(_TangoVideoPruning):
    """Qwen3-VL and its descendants. With pruning on, every image and video embedding leaves with
    ``positions.encode``'s channels (not vLLM's five), and ``recompute_mrope_positions`` places them with
    ``positions.place``: exact in any dtype, and the same however prefill chunks cut the prompt (why:
    ``positions``)."""

    def _postprocess_video_embeds_evs(self, video_embeds_split, video_input):
        grid = video_input["video_grid_thw"].tolist()
        merge = self.visual.spatial_merge_size
        if video_input.timestamps is None:
            raise ValueError("Qwen3-VL video inputs need timestamps when video_pruning_rate > 0 (tango-prune)")
        out = []
        for i, (emb, size, sal) in enumerate(zip(video_embeds_split, grid, self._tango_take_saliency(len(grid)))):
            timestamps = video_input.timestamps[i]
            t, h, w = size
            per_frame = (h // merge) * (w // merge)
            main = self.config.vision_config.out_hidden_size  # then one block of that width per deepstack level
            kept = self._tango_prune(emb[:, :main], size, sal,
                                     torch.as_tensor(timestamps, dtype=torch.float32).flatten())
            feats = torch.cat([kept.features.to(emb.dtype), carry(kept, emb[:, main:])], dim=1)
            mask = torch.zeros(t * per_frame, dtype=torch.bool, device=emb.device)
            mask[kept.index] = True
            counts = torch.bincount(kept.index // per_frame, minlength=t).tolist()
            # vLLM builds the per-frame layout (timestamps, vision start/end) around the kept tokens; its five
            # position channels (in the embedding dtype) are replaced by ours, from its exact integer positions
            final = self._create_final_video_embeddings(
                video_embeddings=feats, num_tokens_per_frame=counts,
                timestamps=timestamps, video_grid_thw=size, retention_mask=mask)[:, :-5]
            rel, lead = self._tango_video_positions(counts, timestamps, size, mask, final.device)
            out.append(torch.cat([final, positions.encode(rel, lead, positions.KIND_VIDEO, final.dtype)], dim=1))
        return tuple(out)

    def _tango_video_positions(self, counts, timestamps, size, mask, device) -> tuple[Tensor, int]:
        """The (t, h, w) positions vLLM gives the rows of ``_create_final_video_embeddings`` (relative to the first
        row), as integers, and the number of rows before the first vision start."""
        cfg = self.config
        ids = torch.tensor(Qwen3VLMultiModalProcessor.get_video_repl(
            tokens_per_frame=counts, tokenizer=self._tokenizer, timestamps=timestamps,
            vision_start_token_id=cfg.vision_start_token_id, vision_end_token_id=cfg.vision_end_token_id,
            video_token_id=cfg.video_token_id, select_token_id=True).full, device=device)
        is_start = ids.eq(cfg.vision_start_token_id)
        rel = self._get_expanded_positions(
            device=device, seq_len=ids.numel(), video_grid_thw=size, num_tokens_per_frame=counts,
            timestamps=timestamps, is_video_embed=ids.eq(cfg.video_token_id), is_vision_start=is_start,
            retention_mask=mask)[:, :3]
        return rel, int(is_start.nonzero()[0])

    def _postprocess_image_embeds_evs(self, image_embeds_split, image_input):
        if not self.is_multimodal_pruning_enabled:
            return image_embeds_split
        merge = self.visual.spatial_merge_size
        return tuple(
            torch.cat([emb, positions.encode(compute_mrope_for_media(size, merge)[:, :3], 0, positions.KIND_IMAGE,
                                             emb.dtype).to(emb.device)], dim=1)
            for emb, size in zip(image_embeds_split, image_input["image_grid_thw"].tolist()))

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens):
        embeds = [mm[:, :-positions.CHANNELS] for mm in multimodal_embeddings]
        items = [positions.decode(mm[:, -positions.CHANNELS:]) for mm in multimodal_embeddings]
        cfg = self.config
        pos, delta = positions.place(
            torch.as_tensor(input_ids), items, mrope_positions, num_computed_tokens,
            vision_start=cfg.vision_start_token_id, video=cfg.video_token_id, image=cfg.image_token_id)
        return embeds, pos, delta


class TangoQwen3VL(_TangoQwen3, Qwen3VLForConditionalGeneration):
    def __init__(self, *, vllm_config, prefix: str = "model") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._tango_setup()


class TangoQwen3VLMoe(_TangoQwen3, Qwen3VLMoeForConditionalGeneration):
    def __init__(self, *, vllm_config, prefix: str = "model") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._tango_setup()
