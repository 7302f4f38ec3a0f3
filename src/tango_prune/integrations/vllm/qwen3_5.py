"""Qwen3.5 (dense and MoE) for vLLM with tango-prune's pruner in place of EVS / VidCom2.

vLLM 0.32's ``Qwen3_5ForConditionalGeneration`` subclasses Qwen3-VL's class (``supports_multimodal_pruning``) and
keeps its tower, its pruning step ``_postprocess_video_embeds_evs`` and its position recompute;
``Qwen3_5MoeForConditionalGeneration`` subclasses the dense one. Both register Qwen3-VL's multimodal processor, so
the placeholder count is the ``compute_retained_tokens_count`` the plugin already replaces in ``qwen3_vl`` (no count
hook of their own). So the Qwen3 mixin applies unchanged: the tower has no deepstack levels (vLLM sets
``deepstack_num_level = 0``), and the mixin's deepstack part then carries zero channels. The hybrid LLM (Gated
DeltaNet + gated attention layers) and the MoE feed-forward never see the pruning: they get the kept rows and their
positions like any other prompt.
"""
from __future__ import annotations

from vllm.model_executor.models.qwen3_5 import Qwen3_5ForConditionalGeneration, Qwen3_5MoeForConditionalGeneration

from .qwen import _TangoQwen3


class TangoQwen3_5(_TangoQwen3, Qwen3_5ForConditionalGeneration):
    pass


class TangoQwen3_5Moe(_TangoQwen3, Qwen3_5MoeForConditionalGeneration):
    pass
