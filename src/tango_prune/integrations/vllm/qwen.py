"""Qwen2.5-VL and Qwen3-VL (dense, MoE) for vLLM with tango-prune's pruner in place of EVS / VidCom2.

vLLM's Qwen models prune in one overridable step, ``_postprocess_video_embeds_evs`` (called only when
``--video-pruning-rate`` > 0): it receives each video's encoder output and returns the kept rows with their
M-RoPE positions appended as extra channels, which the runner strips off in ``recompute_mrope_positions``. Our
subclasses override that step (and ``_process_video_input``, to capture the saliency while the tower runs):

  * the kept rows are exactly ``settings.kept_count`` (the count the patched processor reserved), sorted by
    position, carrying the method's (possibly merged) features;
  * every kept token keeps the (t, h, w) position the unpruned video would have given it, and text after a media
    item continues where it continues after the unpruned item, so the numbering of a prompt depends on its ids and
    grids alone, never on which tokens were kept: ``get_mrope_input_positions`` numbers every text token before any
    chunk runs, and a prefix-cache hit that skips a video leaves nothing to recompute (``positions``);
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

import logging

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
from .qk_capture import capture_qk
from .debug_dump import debug_dir, dump, dump_chunks
from .encoder_stage import check_stage, encode_staged, staged_tower
from .runtime import active_settings, announce, log_once, log_saliency
from .vllm_names import require_attrs, tp_size
from .settings import kept_count, make_pruner, read_settings


class _TangoVideoPruning:
    """What the Qwen subclasses share: settings, pruner, saliency capture, one video's pruning."""

    tango_prune_settings = None

    # vLLM reads this signature to decide how to call it (a bare **kwargs gets the old-style arguments)
    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._tango_setup(vllm_config)

    def _tango_setup(self, vllm_config) -> None:
        announce()
        settings = active_settings() or read_settings()
        if settings is None:
            raise RuntimeError("tango-prune's model class is registered but TANGO_PRUNE_METHOD is unset in this "
                               "process; set it for every vLLM process (export it before starting vLLM)")
        self.tango_prune_settings = settings
        self._tango_pending: list[Tensor | None] | None = None
        self._tango_chunked: list[Pruned] | None = None  # chunk_frames: the videos the tower call just pruned
        self._tango_source = "none"
        self._tango_encoder = settings.encoder  # the encoder stage (encoder_stage.py); None: the stock tower
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
        require_attrs(self, ("use_data_parallel",), type(self).__name__)
        require_attrs(self.visual.blocks[-1].attn, ("attn", "tp_size", "num_attention_heads_per_partition"),
                      "Qwen vision attention")
        # a compiled tower traces our capture hook into its graph (never tried): take the feature-only saliency
        self._tango_compiled_tower = bool(vllm_config.compilation_config.compile_mm_encoder)
        if self._tango_encoder is not None:
            check_stage(self)
        log_once("on", "tango-prune: %s prunes videos with %s, keeping %.4g of each video's tokens",
                 type(self).__name__, settings.describe(), self._tango_retention)

    # -- saliency --------------------------------------------------------------------------------------------
    def _tango_order(self, grid: list[list[int]]) -> Tensor | None:
        """Permutation from the tower's token order to raster order (None: already raster)."""
        return None

    def _process_video_input(self, video_input):
        self._tango_pending, self._tango_chunked = None, None
        if self._tango_pruner is None:
            return super()._process_video_input(video_input)
        reason = None
        if not self._tango_global_query:
            reason = "saliency=features requested"
        elif video_input["type"] != "pixel_values_videos":
            reason = "video given as precomputed embeddings"
        elif self.use_data_parallel:
            reason = "data-parallel vision tower"
        elif self._tango_compiled_tower:
            reason = "compile_mm_encoder: the vision tower is compiled"
        if self.tango_prune_settings.chunk_frames:  # with the encoder stage too: each chunk is then a stage call
            if video_input["type"] == "pixel_values_videos":
                return self._tango_encode_chunked(video_input, reason)
            log_once("chunk-embeds", "tango-prune: chunk_frames has no tower to chunk for videos given as "
                     "precomputed embeddings: pruned whole", level=logging.WARNING)
        if self._tango_encoder is not None and video_input["type"] == "pixel_values_videos":
            out, self._tango_pending = encode_staged(self, video_input, reason)
            return out
        out, self._tango_pending = self._tango_tower(video_input, reason)
        return out

    def _tango_tower(self, video_input, reason: str | None, plan=None) -> tuple[tuple[Tensor, ...], list[Tensor] | None]:
        """vLLM's own tower call on ``video_input`` (per-video embeddings), and each video's global-query saliency
        (None when ``reason`` says why there is none, or the capture failed). ``plan``: the encoder stage's, whose
        last block hands over every row's queries and keys (``encoder_stage``)."""
        if reason is not None:
            self._tango_source = f"feature-distinctiveness ({reason})"
            return super()._process_video_input(video_input), None
        attn = self.visual.blocks[-1].attn
        with capture_qk(attn.attn) as cap:
            out = super()._process_video_input(video_input)
        if plan is not None and plan.qk is not None:
            q, k = plan.qk
        elif len(cap["q"]) != 1:  # the tower ran in pieces we cannot align; fall back rather than guess
            self._tango_source = f"feature-distinctiveness (last block called {len(cap['q'])} times)"
            return out, None
        else:
            q, k = cap["q"][0].flatten(0, 1), cap["k"][0].flatten(0, 1)
        grid = video_input["video_grid_thw"].tolist()
        tp = tp_size(attn)
        reduce = None
        if tp > 1:
            from vllm.distributed import tensor_model_parallel_all_reduce as reduce
        saliency = global_query(
            q, k, grid, self.visual.spatial_merge_size,
            order=self._tango_order(grid), all_reduce=reduce,
            total_heads=attn.num_attention_heads_per_partition * tp)
        self._tango_source = "qwen-global-query"
        return out, saliency

    def _tango_encode_chunked(self, video_input, reason: str | None) -> tuple[Tensor, ...]:
        """``chunk_frames``: each video through the tower that many temporal patches at a time (its attention never
        crosses a temporal patch, so a chunk's rows are the whole call's), each chunk pruned as it comes
        (stream.TangoStream); only kept rows are held. Returns each video's kept rows (main features, then the
        deepstack levels carried along); their Pruned wait in ``_tango_chunked`` for the post-process step. The same
        chunks on every rank (a function of the grid), so the saliency's all-reduces pair up under TP."""
        grid, pixels = video_input["video_grid_thw"], video_input["pixel_values_videos"]
        m, c = self.visual.spatial_merge_size, self.tango_prune_settings.chunk_frames
        main = self._tango_main_width()
        staged = self._tango_encoder is not None  # the encoder stage: each chunk's first temporal patch is a key
        out, self._tango_chunked, row = [], [], 0
        for v, (t, h, w) in enumerate(grid.tolist()):
            stream = self.tango_prune_settings.make_stream(self._tango_retention)
            times = self._tango_times(video_input, v, t)
            hh, ww = h // m, w // m
            seen = [] if debug_dir() else None
            for s in range(0, t, c):
                n = min(c, t - s)
                sub = {"type": "pixel_values_videos", "pixel_values_videos": pixels[row + s * h * w:row + (s + n) * h * w],
                       "video_grid_thw": grid.new_tensor([[n, h, w]])}
                (emb,), sal = staged_tower(self, sub, reason) if staged else self._tango_tower(sub, reason)
                chunk = VideoTokens(emb[:, :main].reshape(n, hh * ww, -1), None if sal is None else sal[0].to(emb.device),
                                    (n, hh, ww), times[s:s + n])
                stream.push(chunk, extras=(emb[:, main:],) if emb.shape[1] > main else ())
                if seen is not None:
                    seen.append(chunk)
            kept = stream.finish()
            want = kept_count(self.tango_prune_settings, hh * ww, t, self._tango_retention)
            if kept.num_kept != want:
                raise RuntimeError(f"tango-prune: the chunked stream kept {kept.num_kept} tokens, the prompt reserved {want}")
            log_saliency(self._tango_source, from_tower=self._tango_source == "qwen-global-query")
            if seen is not None:
                dump_chunks(seen, kept, self._tango_source, self._tango_retention)
            out.append(torch.cat([kept.features.to(emb.dtype), *stream.carried], dim=1))
            self._tango_chunked.append(kept)
            row += t * h * w
        return tuple(out)

    def _tango_main_width(self) -> int:
        """Channels of a tower row that are the main features (Qwen3-VL appends its deepstack levels after them)."""
        return self.config.vision_config.out_hidden_size

    def _tango_times(self, video_input, v: int, t: int) -> Tensor:
        """The seconds of video ``v``'s ``t`` temporal patches, as the pruner takes them."""
        raise NotImplementedError

    def _tango_kept(self, i: int, emb: Tensor, size: list[int], saliency: Tensor | None, times: Tensor) -> Pruned:
        """Video ``i``'s Pruned: the chunked stream's (``emb`` are then its kept rows already) or the pruner's."""
        if self._tango_chunked is not None:
            return self._tango_chunked[i]
        return self._tango_prune(emb, size, saliency, times)

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
        log_saliency(source, from_tower=source == "qwen-global-query")
        dump(vt, out, source, self._tango_retention)
        return out


class _TangoMRoPE(_TangoVideoPruning):
    """M-RoPE positions while pruning is on (every Qwen family): every image and video embedding leaves with
    ``positions.encode``'s channels (not vLLM's), ``get_mrope_input_positions`` numbers the prompt with
    ``positions.layout`` (exact text positions from the ids and grids alone) and ``recompute_mrope_positions`` places
    each chunk's media rows with ``positions.place``: exact in any dtype, the same however prefill chunks cut the
    prompt and wherever a prefix-cache hit ends (why: ``positions``)."""

    _tango_video_kind = positions.KIND_VIDEO

    def _tango_video_runs(self, ids: Tensor, offset: int, length: int, grid: list[int], data) -> tuple[list, list, list]:
        """(starts, lengths, extents) of one video item's runs of media tokens in the prompt."""
        raise NotImplementedError

    def get_mrope_input_positions(self, input_tokens, mm_features):
        if self._tango_pruner is None:
            return super().get_mrope_input_positions(input_tokens, mm_features)
        ids = torch.as_tensor(input_tokens, dtype=torch.long)
        merge = self.config.vision_config.spatial_merge_size
        starts, lengths, extents = [], [], []
        for f in sorted(mm_features, key=lambda f: f.mm_position.offset):
            offset, length = f.mm_position.offset, f.mm_position.length
            if f.modality == "image":
                _, h, w = f.data["image_grid_thw"].data.tolist()
                starts.append(offset), lengths.append(length), extents.append(max(h, w) // merge)
            elif f.modality == "video":
                a, b, c = self._tango_video_runs(ids, offset, length, f.data["video_grid_thw"].data.tolist(), f.data)
                starts += a
                lengths += b
                extents += c
            else:
                raise ValueError(f"tango-prune: M-RoPE positions for modality {f.modality!r} are not supported")
        pos, delta = positions.layout(ids.numel(), torch.tensor(starts, dtype=torch.long),
                                      torch.tensor(lengths, dtype=torch.long), torch.tensor(extents, dtype=torch.long))
        return pos, delta

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


def _t_positions(t: int, tokens_per_second: float, step: float) -> Tensor:
    """Relative t position of each of a Qwen2.5-VL video's t temporal patches (vLLM's own arithmetic)."""
    return compute_mrope_for_media(torch.tensor([t, 1, 1]), 1, tokens_per_second=tokens_per_second,
                                   video_second_per_grid=step)[:, 0]


class TangoQwen2_5_VL(_TangoMRoPE, Qwen2_5_VLForConditionalGeneration):
    _tango_video_kind = positions.KIND_VIDEO_RUN

    def _tango_order(self, grid):
        # vLLM runs the tower in window order and undoes it after the merger with these indices
        return self.visual.prepare_encoder_metadata(grid)["reverse_indices"]

    def _tango_video_runs(self, ids, offset, length, grid, data):
        # one run of kept tokens; unpruned, the video spans max(t, h, w) + 1 positions
        t, h, w = grid
        merge = self.config.vision_config.spatial_merge_size
        seconds = data.get("second_per_grid_ts")
        step = float(seconds.data.item()) if seconds is not None else 1.0
        t_max = int(_t_positions(t, self.config.vision_config.tokens_per_second, step).max())
        return [offset], [length], [max(t_max, h // merge - 1, w // merge - 1) + 1]

    def _tango_times(self, video_input, v, t):
        spt = video_input.get("second_per_grid_ts")
        if spt is None:
            raise ValueError("second_per_grid_ts is required when video_pruning_rate > 0 (tango-prune)")
        # as models.qwen_vl: a temporal patch sits at the mean time of its frames (for ST-RoPE)
        return patch_times(t, float(spt[v]))

    def _postprocess_video_embeds_evs(self, video_embeds_split, video_input):
        grid = video_input["video_grid_thw"].tolist()
        tps = self.config.vision_config.tokens_per_second
        merge = self.visual.spatial_merge_size
        out = []
        for i, (emb, size, sal) in enumerate(zip(video_embeds_split, grid, self._tango_take_saliency(len(grid)))):
            kept = self._tango_kept(i, emb, size, sal, self._tango_times(video_input, i, size[0]))
            step = float(video_input["second_per_grid_ts"][i])
            # each kept token at the position the unpruned video gives it (vLLM's own arithmetic, float step)
            rel = compute_mrope_for_media(size, merge, tokens_per_second=tps, video_second_per_grid=step)[:, :3]
            chans = positions.encode(rel.to(emb.device)[kept.index], 0, positions.KIND_VIDEO_RUN, emb.dtype)
            out.append(torch.cat([kept.features.to(emb.dtype), chans], dim=1))
        self._tango_chunked = None
        return tuple(out)


class _TangoQwen3(_TangoMRoPE):
    """Qwen3-VL and its descendants (Qwen3.5): a video's rows are its frames' timestamps, vision start, kept tokens
    and vision end, laid out by vLLM's ``_create_final_video_embeddings``."""

    def _tango_video_runs(self, ids, offset, length, grid, data):
        # each frame: a run of its tokens in the prompt (the pruned prompt lumps them all into the first frame's
        # slot; the others are empty) spanning max(h, w) positions unpruned
        t, h, w = grid
        merge = self.config.vision_config.spatial_merge_size
        cfg = self.config
        seg = ids[offset:offset + length]
        starts = (seg == cfg.vision_start_token_id).nonzero().flatten()
        ends = (seg == cfg.vision_end_token_id).nonzero().flatten()
        if len(starts) != t or len(ends) != t:
            raise RuntimeError(f"tango-prune: a video of {t} temporal patches has {len(starts)} vision starts and "
                               f"{len(ends)} vision ends in its prompt range")
        runs = ends - starts - 1
        return (starts + 1 + offset).tolist(), runs.tolist(), [max(h, w) // merge] * t

    def _postprocess_video_embeds_evs(self, video_embeds_split, video_input):
        grid = video_input["video_grid_thw"].tolist()
        merge = self.visual.spatial_merge_size
        out = []
        for i, (emb, size, sal) in enumerate(zip(video_embeds_split, grid, self._tango_take_saliency(len(grid)))):
            timestamps = video_input.timestamps[i]
            t, h, w = size
            per_frame = (h // merge) * (w // merge)
            main = self._tango_main_width()  # then one block of that width per deepstack level
            kept = self._tango_kept(i, emb[:, :main], size, sal, self._tango_times(video_input, i, t))
            # chunk by chunk, the stream carried the deepstack levels already (emb is its kept rows)
            feats = emb if self._tango_chunked is not None else \
                torch.cat([kept.features.to(emb.dtype), carry(kept, emb[:, main:])], dim=1)
            mask = torch.zeros(t * per_frame, dtype=torch.bool, device=emb.device)
            mask[kept.index] = True
            counts = torch.bincount(kept.index // per_frame, minlength=t).tolist()
            # vLLM builds the per-frame layout (timestamps, vision start/end) around the kept tokens; its five
            # position channels (in the embedding dtype; made through our get_mrope_input_positions, so not
            # vLLM's numbers) are replaced by ours
            final = self._create_final_video_embeddings(
                video_embeddings=feats, num_tokens_per_frame=counts,
                timestamps=timestamps, video_grid_thw=size, retention_mask=mask)[:, :-5]
            rel, lead = self._tango_video_positions(counts, timestamps, size, kept.index, final.device)
            out.append(torch.cat([final, positions.encode(rel, lead, positions.KIND_VIDEO, final.dtype)], dim=1))
        self._tango_chunked = None
        return tuple(out)

    def _tango_times(self, video_input, v, t):
        if video_input.timestamps is None:
            raise ValueError("Qwen3-VL video inputs need timestamps when video_pruning_rate > 0 (tango-prune)")
        return torch.as_tensor(video_input.timestamps[v], dtype=torch.float32).flatten()

    def _tango_video_positions(self, counts, timestamps, size, kept: Tensor, device) -> tuple[Tensor, int]:
        """The (t, h, w) positions of the rows of ``_create_final_video_embeddings`` relative to the first row (the
        ones vLLM gives them: every row where the unpruned video puts it), and the rows before the first vision
        start. Not vLLM's ``_get_expanded_positions``: it numbers through ``get_mrope_input_positions``, which
        ``_TangoMRoPE`` overrides for pruned prompts."""
        cfg = self.config
        merge = self.visual.spatial_merge_size
        repl = torch.tensor(Qwen3VLMultiModalProcessor.get_video_repl(
            tokens_per_frame=counts, tokenizer=self._tokenizer, timestamps=timestamps,
            vision_start_token_id=cfg.vision_start_token_id, vision_end_token_id=cfg.vision_end_token_id,
            video_token_id=cfg.video_token_id, select_token_id=True).full)
        _, h, w = size
        per_frame = (h // merge) * (w // merge)
        rel = positions.frame_rows(repl, vision_start=cfg.vision_start_token_id, vision_end=cfg.vision_end_token_id,
                                   video=cfg.video_token_id, extent=max(h, w) // merge,
                                   kept=kept.cpu() % per_frame, grid_w=w // merge)
        return rel.to(device), int((repl == cfg.vision_start_token_id).nonzero()[0])


class TangoQwen3VL(_TangoQwen3, Qwen3VLForConditionalGeneration):
    pass


class TangoQwen3VLMoe(_TangoQwen3, Qwen3VLMoeForConditionalGeneration):
    pass
