"""The table of vLLM names: every vLLM name the plugin replaces, subclasses, overrides, calls or reads, as data.

``scripts/vllm_api_check.py WHEEL_OR_DIR...`` checks each against a vLLM release's *source* (a wheel it never
installs or imports, or an installed ``site-packages``), so a new release can be judged before it is installed.
Whoever changes the plugin's use of vLLM changes this table in the same commit: a name used but not listed is a
name no check guards. A name read with a fallback (a ``getattr`` default, ``or 0.0``) says so in ``fallback``; every
other instance attribute the plugin reads is checked on the live object at model init (``require_attrs`` below)
and a missing one stops start-up with one line.

A ``Need`` is ``module:Qual.name`` plus what the plugin needs of it:

  module     the module exists
  name       a module-level name is bound (defined, imported, or exported by the module's ``__getattr__``)
  class      it is a class (followed through imports)
  exact      a function or method (found along the class's bases in that release) with exactly these parameter
             names: what the plugin overrides or replaces is called by vLLM with vLLM's own arguments
  call       the plugin calls it: ``params`` = (number of positional arguments, self included, then the keyword
             names); it must bind them like Python would
  attr       the class (or a base) defines it: a method, a class-level name or field, or ``self.<attr> = ...``
  reads      a method of the class (or a base) reads ``self.<attr>`` (what the plugin sets must be used); with
             ``params=(name,)``, ``Class.method`` itself reads ``self.<name>``
  calls      ``Class.method`` calls ``<something>.<params[0]>(...)`` with ``params[1]`` positional arguments and
             exactly the keywords ``params[2:]`` (how vLLM's runners call what the plugin overrides)
  hook       a module-level function the plugin *replaces* (vLLM's plugin hook): exact parameters, and the module
             calls it through its global name, so replacing the module attribute takes effect
  constructs the module instantiates the class through its global name (``Name(...)``), so replacing the module
             attribute changes what is built (the CPU-runner swap)

``platform="cpu"``: needed only where vLLM runs on CPU (the CPU-runner replacement). A CUDA wheel carries the same
Python source for its CPU worker, so the check reads these there too.

``SUBCLASSED``: for each architecture the plugin registers, the vLLM class it subclasses. The source check requires
that vLLM's own registry entry for the architecture resolves to exactly that class on every import branch (else the
plugin would serve an older implementation than stock vLLM, or subclass the wrong one), and ``register`` checks the
same at start-up.
"""
from __future__ import annotations

from typing import NamedTuple

M = "vllm.model_executor.models."
Q25 = M + "qwen2_5_vl:"
Q3 = M + "qwen3_vl:"
LOV = M + "llava_onevision:"


class Need(NamedTuple):
    name: str
    kind: str
    params: tuple = ()
    platform: str = "any"
    used_in: str = ""
    fallback: str = ""  # what the plugin does when the name is missing ("" = no fallback: start-up stops)


def _model(cls: str, used_in: str) -> list[Need]:
    """What every model subclass needs of its vLLM base: the class and its keyword-only constructor."""
    return [Need(cls, "class", used_in=used_in), Need(f"{cls}.__init__", "call", (1, "vllm_config", "prefix"), used_in=used_in)]


NEEDS: tuple[Need, ...] = (
    # __init__.py: version, count hooks, registry, CPU runner
    Need("vllm:__version__", "name", used_in="__init__"),
    Need("vllm:ModelRegistry", "name", used_in="__init__"),
    Need(M + "registry:_ModelRegistry.register_model", "call", (3,), used_in="__init__, llava_ov"),
    Need(M + "registry:_ModelRegistry.models", "attr", used_in="llava_ov"),
    Need(M + "registry:_ModelRegistry.get_supported_archs", "call", (1,), used_in="coverage"),
    Need(M + "registry:_RegisteredModel.load_model_cls", "call", (1,), used_in="llava_ov (the registration took)"),
    Need(M + "registry:_VLLM_MODELS", "name", used_in="coverage"),
    Need(Q25 + "compute_retained_tokens_count", "hook", ("tokens_per_frame", "num_frames", "q"), used_in="__init__"),
    Need(Q3 + "compute_retained_tokens_count", "hook", ("tokens_per_frame", "num_frames", "q"), used_in="__init__"),
    Need(Q3 + "vidcom2_compute_retained_tokens_count", "hook", ("tokens_per_frame", "num_frames", "q"), used_in="__init__"),
    Need("vllm.platforms:current_platform", "name", used_in="__init__"),
    Need("vllm.platforms.interface:Platform.is_cpu", "call", (1,), used_in="__init__"),
    Need("vllm.v1.worker.cpu_worker:CPUModelRunner", "class", platform="cpu", used_in="__init__"),
    Need("vllm.v1.worker.cpu_worker:CPUModelRunner", "constructs", platform="cpu",
         used_in="__init__ (the worker builds the runner the plugin swapped in)"),
    Need("vllm.v1.worker.cpu_worker:CPUModelRunner.load_model", "exact", ("self", "load_dummy_weights"), "cpu", "__init__"),
    Need("vllm.v1.worker.cpu_worker:CPUModelRunner.get_model", "call", (1,), "cpu", "__init__"),
    Need("vllm.v1.worker.cpu_worker:CPUModelRunner.model_config", "attr", platform="cpu", used_in="__init__"),
    Need("vllm.v1.worker.cpu_worker:CPUModelRunner.is_multimodal_pruning_enabled", "reads", platform="cpu",
         used_in="__init__ (the runner must act on the flag the plugin sets)"),
    Need("vllm.config.multimodal:MultiModalConfig.is_multimodal_pruning_enabled", "call", (1,), used_in="__init__, coverage"),
    Need("vllm.config.vllm:VllmConfig.model_config", "attr", used_in="coverage"),
    Need("vllm.config.model:ModelConfig.multimodal_config", "attr", used_in="__init__ (CPU runner), coverage"),
    Need("vllm.config.vllm:VllmConfig.use_v2_model_runner", "attr", platform="cpu",
         used_in="__init__ (the rule the CPU worker picks V1 or V2 by; the plugin predicts it and refuses V2)"),
    Need("vllm.envs:VLLM_USE_V2_MODEL_RUNNER", "name", platform="cpu", used_in="__init__ (CPU runner V1 or V2)"),
    Need("vllm.triton_utils:HAS_TRITON", "name", platform="cpu", used_in="__init__ (CPU runner V1 or V2)"),
    Need("vllm.config.multimodal:MultiModalConfig.video_pruning_rate", "attr", used_in="llava_ov",
         fallback="None or 0 is vLLM's own 'unset': pruning off"),
    Need("vllm.logger:init_logger", "call", (1,), used_in="runtime, llava_ov"),
    Need("vllm.distributed:tensor_model_parallel_all_reduce", "call", (1,), used_in="qwen, llava_ov"),
    # cli/serve.py: the module `tango-prune serve` runs (python -m; what `vllm serve` starts)
    Need("vllm.entrypoints.launchers.api_server.entry:main", "call", (0,), used_in="cli/serve"),
    # qwen.py: Qwen2.5-VL
    *_model(Q25 + "Qwen2_5_VLForConditionalGeneration", "qwen"),
    Need(Q25 + "Qwen2_5_VLForConditionalGeneration._process_video_input", "exact", ("self", "video_input"), used_in="qwen"),
    Need(Q25 + "Qwen2_5_VLForConditionalGeneration._postprocess_video_embeds_evs", "exact",
         ("self", "video_embeds_split", "video_input"), used_in="qwen"),
    *(Need(Q25 + f"Qwen2_5_VLForConditionalGeneration.{a}", "attr", used_in="qwen")
      for a in ("video_pruning_rate", "is_multimodal_pruning_enabled", "visual", "config")),
    Need(Q25 + "Qwen2_5_VLForConditionalGeneration.use_data_parallel", "attr", used_in="qwen"),
    *(Need(Q25 + f"Qwen2_5_VLVideoPixelInputs.{a}", "attr", used_in="qwen (video_input[...], Qwen3-VL too)")
      for a in ("type", "video_grid_thw", "second_per_grid_ts", "timestamps")),
    Need(Q25 + "Qwen2_5_VLImagePixelInputs.image_grid_thw", "attr", used_in="qwen (Qwen3 image positions)"),
    # with pruning on, vLLM keeps the Qwen towers out of its encoder CUDA graphs (which would bypass the pruning step)
    *(Need(f"{cls}.get_encoder_cudagraph_config", "reads", ("is_multimodal_pruning_enabled",),
           used_in="qwen (the pruning step runs eagerly)") for cls in (Q25 + "Qwen2_5_VLForConditionalGeneration",
                                                                       Q3 + "Qwen3VLForConditionalGeneration")),
    Need("vllm.config.compilation:CompilationConfig.compile_mm_encoder", "attr",
         used_in="qwen (a compiled tower: feature-only saliency, WARNING)"),
    Need("vllm.config.compilation:CompilationConfig.cudagraph_mm_encoder", "attr", used_in="docs/vllm.md (GPU path)"),
    Need("vllm.config.vllm:VllmConfig.compilation_config", "attr", used_in="qwen"),
    Need(Q25 + "Qwen2_5_VisionTransformer.prepare_encoder_metadata", "call", (2,), used_in="qwen"),
    Need(Q25 + "Qwen2_5_VisionTransformer.blocks", "attr", used_in="qwen"),
    Need(Q25 + "Qwen2_5_VisionTransformer.spatial_merge_size", "attr", used_in="qwen"),
    Need(Q25 + "Qwen2_5_VisionBlock.attn", "attr", used_in="qwen"),
    *(Need(Q25 + f"Qwen2_5_VisionAttention.{a}", "attr", used_in="qwen, qk_capture")
      for a in ("attn", "num_attention_heads_per_partition")),
    Need(Q25 + "Qwen2_5_VisionAttention.tp_size", "attr", used_in="qwen, qk_capture",
         fallback="none: qwen.py reads attn.tp_size with no default; tp_size / require_attrs (below) stop model init"),
    Need("vllm.model_executor.layers.attention.mm_encoder_attention:MMEncoderAttention", "class", used_in="qk_capture"),
    Need("vllm.model_executor.layers.attention.mm_encoder_attention:MMEncoderAttention.forward_native", "call",
         (1, "query", "key", "value"), used_in="saliency (the pre-hook reads query/key)"),
    Need("vllm.multimodal.video_prune.evs:compute_mrope_for_media", "call", (2, "tokens_per_second", "video_second_per_grid"),
         used_in="qwen"),
    # qwen.py: Qwen3-VL (dense, MoE)
    *_model(Q3 + "Qwen3VLForConditionalGeneration", "qwen"),
    *_model(M + "qwen3_vl_moe:Qwen3VLMoeForConditionalGeneration", "qwen"),
    Need(Q3 + "Qwen3VLForConditionalGeneration._process_video_input", "exact", ("self", "video_input"), used_in="qwen"),
    Need(Q3 + "Qwen3VLForConditionalGeneration._postprocess_video_embeds_evs", "exact",
         ("self", "video_embeds_split", "video_input"), used_in="qwen"),
    Need(Q3 + "Qwen3VLForConditionalGeneration._postprocess_image_embeds_evs", "exact",
         ("self", "image_embeds_split", "image_input"), used_in="qwen"),
    Need(Q3 + "Qwen3VLForConditionalGeneration._create_final_video_embeddings", "call",
         (1, "video_embeddings", "num_tokens_per_frame", "timestamps", "video_grid_thw", "retention_mask"), used_in="qwen"),
    Need(Q3 + "Qwen3VLForConditionalGeneration._get_expanded_positions", "call",
         (1, "device", "seq_len", "video_grid_thw", "num_tokens_per_frame", "timestamps", "is_video_embed",
          "is_vision_start", "retention_mask"), used_in="qwen"),
    Need(Q3 + "Qwen3VLForConditionalGeneration.recompute_mrope_positions", "exact",
         ("self", "input_ids", "multimodal_embeddings", "mrope_positions", "num_computed_tokens"), used_in="qwen"),
    *(Need(f"{cls}.get_mrope_input_positions", "exact", ("self", "input_tokens", "mm_features"),
           used_in="qwen (numbers a new request's prompt while pruning: runners call it positionally)")
      for cls in (Q25 + "Qwen2_5_VLForConditionalGeneration", Q3 + "Qwen3VLForConditionalGeneration")),
    *(Need(f"vllm.multimodal.inputs:{n}", "attr", used_in="qwen (get_mrope_input_positions reads mm_features)")
      for n in ("MultiModalFeatureSpec.mm_position", "MultiModalFeatureSpec.modality", "MultiModalFeatureSpec.data",
                "PlaceholderRange.offset", "PlaceholderRange.length", "MultiModalFieldElem.data")),
    # the GPU runners reach the overrides (docs/vllm.md, "The GPU path, read from source"): V1 (0.31-0.33) and V2
    *(Need(caller, "calls", ("recompute_mrope_positions", 0, "input_ids", "multimodal_embeddings", "mrope_positions",
                             "num_computed_tokens"), used_in="qwen (runner side of the override)")
      for caller in ("vllm.v1.worker.gpu_model_runner:GPUModelRunner._gather_mm_embeddings",
                     "vllm.v1.worker.gpu.model_states.mm_pruning:MultiModalPruner.recompute")),
    *(Need(caller, "calls", ("get_mrope_input_positions", 2), used_in="qwen (what numbers a new request's prompt)")
      for caller in ("vllm.v1.worker.gpu_model_runner:GPUModelRunner._init_mrope_positions",
                     "vllm.v1.worker.gpu.mm.rope:RopeState.init_prefill_positions")),
    *(Need(Q3 + f"Qwen3VLForConditionalGeneration.{a}", "attr", used_in="qwen")
      for a in ("video_pruning_rate", "is_multimodal_pruning_enabled", "visual", "config", "_tokenizer")),
    Need(Q3 + "Qwen3VLForConditionalGeneration.use_data_parallel", "attr", used_in="qwen"),
    Need(Q3 + "Qwen3VLMultiModalProcessor.get_video_repl", "call",
         (0, "tokens_per_frame", "timestamps", "tokenizer", "vision_start_token_id", "vision_end_token_id", "video_token_id",
          "select_token_id"), used_in="qwen"),
    Need(Q3 + "Qwen3_VisionTransformer.blocks", "attr", used_in="qwen"),
    Need(Q3 + "Qwen3_VisionTransformer.spatial_merge_size", "attr", used_in="qwen"),
    Need(Q3 + "Qwen3_VisionBlock.attn", "attr", used_in="qwen"),
    # encoder_stage.py: the encoder stage's wrappers stand in for the tower's blocks (called as vLLM's towers call
    # them) and run the blocks' own modules on the computed rows
    *(Need(f"{cls}.forward", "exact", ("self", "x", "cu_seqlens", "rotary_pos_emb_cos", "rotary_pos_emb_sin",
                                        "max_seqlen", "sequence_lengths"), used_in="encoder_stage")
      for cls in (Q25 + "Qwen2_5_VisionBlock", Q3 + "Qwen3_VisionBlock")),
    *(Need(f"{cls}.{a}", "attr", used_in="encoder_stage")
      for cls in (Q25 + "Qwen2_5_VisionBlock", Q3 + "Qwen3_VisionBlock") for a in ("norm1", "norm2", "mlp")),
    *(Need(Q25 + f"Qwen2_5_VisionAttention.{a}", "attr", used_in="encoder_stage")
      for a in ("qkv", "proj", "apply_rotary_emb", "hidden_size_per_attention_head")),
    *(Need(f"{cls}.prepare_encoder_metadata", "call", (2, "device"), used_in="encoder_stage (the key patches' metadata)")
      for cls in (Q25 + "Qwen2_5_VisionTransformer", Q3 + "Qwen3_VisionTransformer")),
    Need(Q25 + "Qwen2_5_VisionTransformer.fullatt_block_indexes", "attr", used_in="encoder_stage",
         fallback="getattr default: every block full attention (Qwen3-VL's towers have no window layers)"),
    Need(Q25 + "Qwen2_5_VisionTransformer.attn_backend", "attr", used_in="encoder_stage",
         fallback="getattr default '': the FlashInfer refusal would not fire"),
    # qwen3_5.py: Qwen3.5 (dense, MoE) with qwen.py's Qwen3 mixin
    *_model(M + "qwen3_5:Qwen3_5ForConditionalGeneration", "qwen3_5"),
    *_model(M + "qwen3_5:Qwen3_5MoeForConditionalGeneration", "qwen3_5"),
    # llava_ov.py
    Need(LOV + "LlavaOnevisionProcessingInfo.__init__", "call", (2,), used_in="llava_ov"),
    Need(LOV + "LlavaOnevisionProcessingInfo.get_num_video_tokens", "exact",
         ("self", "*", "image_width", "image_height", "num_frames"), used_in="llava_ov"),
    Need(LOV + "LlavaOnevisionProcessingInfo._get_num_frame_tokens", "call", (1, "image_width", "image_height"),
         used_in="llava_ov"),
    Need(LOV + "LlavaOnevisionMultiModalProcessor", "class", used_in="llava_ov"),
    Need(LOV + "LlavaOnevisionDummyInputsBuilder", "class", used_in="llava_ov"),
    *_model(LOV + "LlavaOnevisionForConditionalGeneration", "llava_ov"),
    Need(LOV + "LlavaOnevisionForConditionalGeneration._process_video_pixels", "exact", ("self", "inputs"), used_in="llava_ov"),
    Need(LOV + "LlavaOnevisionVideoPixelInputs.pixel_values_videos", "attr", used_in="llava_ov (inputs[...])"),
    Need(LOV + "LlavaOnevisionForConditionalGeneration._video_pixels_to_features", "call", (3,), used_in="llava_ov"),
    Need(LOV + "LlavaOnevisionForConditionalGeneration.apply_pooling", "call", (2,), used_in="llava_ov"),
    *(Need(LOV + f"LlavaOnevisionForConditionalGeneration.{a}", "attr", used_in="llava_ov")
      for a in ("image_newline", "vision_tower", "config", "multimodal_config")),
    Need("vllm.multimodal:MULTIMODAL_REGISTRY", "name", used_in="llava_ov"),
    Need("vllm.multimodal.registry:MultiModalRegistry.register_processor", "call", (2, "info", "dummy_inputs"),
         used_in="llava_ov"),
    Need("vllm.multimodal.processing:InputProcessingContext.get_mm_config", "call", (1,), used_in="llava_ov"),
    *(Need(M + f"siglip:SiglipAttention.{a}", "attr",
           used_in="llava_ov, models.saliency (LLaVA-OV's tower; require_attrs at model init)")
      for a in ("qkv_proj", "num_heads_per_partition", "num_heads", "scale", "tp_size")),
    *(Need(M + f"siglip:SiglipEncoderLayer.{a}", "attr", used_in="llava_ov, models.saliency (require_attrs)")
      for a in ("self_attn", "layer_norm1")),
    Need(M + "siglip:SiglipEncoder.layers", "attr", used_in="llava_ov"),
    # encoder_stage_llava.py: wrappers stand in for the encoder's layers, called as SiglipEncoder.forward calls them
    Need(M + "siglip:SiglipEncoderLayer.forward", "exact", ("self", "hidden_states"), used_in="encoder_stage_llava"),
    *(Need(M + f"siglip:SiglipEncoderLayer.{a}", "attr", used_in="encoder_stage_llava")
      for a in ("layer_norm2", "mlp")),
    *(Need(M + f"siglip:SiglipAttention.{a}", "attr", used_in="encoder_stage_llava") for a in ("out_proj", "attn")),
    Need(M + "siglip:SiglipVisionTransformer.encoder", "attr", used_in="llava_ov"),
    Need(M + "siglip:SiglipVisionModel.vision_model", "attr", used_in="llava_ov"),
)

# Architectures vLLM itself can prune (their class, or a base, declares SupportsMultiModalPruning or sets
# supports_multimodal_pruning): those the plugin does not cover refuse to start while TANGO_PRUNE_METHOD is set
# (``coverage``). ``vllm_api_check.py`` fails on a release that can prune an architecture missing here.
# Found in 0.31.0, 0.32.0, 0.33.0 and 0.34.0 (the last two add Alpamayo2Super and ClefFlashForJointSchema).
PRUNABLE_ARCHS: frozenset[str] = frozenset({
    "Alpamayo2Super", "ClefFlashForJointSchema", "CohereCompassForConditionalGeneration", "ColQwen3", "ColQwen3_5",
    "Cosmos3ForConditionalGeneration", "Exaone4_5_ForConditionalGeneration", "InternS1ProForConditionalGeneration",
    "InternS2MobiusForConditionalGeneration", "InternS2PreviewForConditionalGeneration",
    "NemotronH_Nano_Omni_Reasoning_V3", "NemotronH_Nano_VL_V2", "NemotronH_Omni_Reasoning_V3",
    "NemotronH_Super_Omni_Reasoning_V3", "OpenCUAForConditionalGeneration", "OpsColQwen3Model",
    "Qwen2_5_VLForConditionalGeneration", "Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration",
    "Qwen3VLNemotronEmbedModel", "Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration",
    "Qwen4ExpForConditionalGeneration",
})

# architecture -> the vLLM class the plugin's subclass derives from (integrations/vllm: qwen, qwen3_5, llava_ov)
SUBCLASSED: dict[str, str] = {
    "Qwen2_5_VLForConditionalGeneration": Q25 + "Qwen2_5_VLForConditionalGeneration",
    "Qwen3VLForConditionalGeneration": Q3 + "Qwen3VLForConditionalGeneration",
    "Qwen3VLMoeForConditionalGeneration": M + "qwen3_vl_moe:Qwen3VLMoeForConditionalGeneration",
    "Qwen3_5ForConditionalGeneration": M + "qwen3_5:Qwen3_5ForConditionalGeneration",
    "Qwen3_5MoeForConditionalGeneration": M + "qwen3_5:Qwen3_5MoeForConditionalGeneration",
    "LlavaOnevisionForConditionalGeneration": LOV + "LlavaOnevisionForConditionalGeneration",
}

__all__ = ["NEEDS", "Need", "PRUNABLE_ARCHS", "SUBCLASSED"]


class MissingVllmName(RuntimeError):
    """A vLLM name the plugin reads is absent: stop rather than run with a guessed value."""


def require_attrs(obj, names, owner: str) -> None:
    """Raise one line naming the first of ``names`` that ``obj`` (a vLLM object; ``owner`` says which) lacks.
    Called at model init, so that a vLLM release that renamed an attribute stops start-up instead of serving
    with a default (each name is in ``vllm_names.NEEDS``)."""
    missing = [n for n in names if not hasattr(obj, n)]
    if missing:
        raise MissingVllmName(f"tango-prune: vLLM's {owner} has no attribute {missing[0]!r} (this vLLM differs from "
                              f"the releases the plugin supports); unset TANGO_PRUNE_METHOD or install a supported vLLM")


def tp_size(attn, owner: str = "vision attention") -> int:
    """The tensor-parallel size of a vLLM attention module (its ``tp_size``), never a default: a wrong 1 would
    silently skip the saliency all-reduce and let every rank keep different tokens."""
    require_attrs(attn, ("tp_size",), owner)
    return int(attn.tp_size)
