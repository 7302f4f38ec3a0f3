"""Model adapters: ``apply(model, method=..., retention=...)`` makes a stock Hugging Face Video LLM prune."""
from __future__ import annotations

from .handle import PruneHandle

SUPPORTED = ("LlavaOnevisionForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration", "Qwen2VLForConditionalGeneration",
             "Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration", "Qwen3_5ForConditionalGeneration",
             "Qwen3_5MoeForConditionalGeneration")


def apply(model, method: str = "tango", retention: float = 0.1, **opts) -> PruneHandle:
    """Wrap ``model`` so that its ``generate(...)`` and ``forward(...)`` prune video tokens before the LLM.

    ``opts``: the method's options (e.g. TangoConfig fields), plus adapter options: ``saliency`` (auto,
    map-head, cls, attention, features) and ``siglip_head`` (a local SigLIP checkpoint dir whose attention-pooling
    head gives LLaVA-OV's saliency, as in Tango's release), ``positions`` for LLaVA-OV ("compact", the release's
    numbering of the shortened sequence, or "original": kept and text tokens keep their full-sequence 1-D
    positions; Qwen always keeps its M-RoPE positions), and ``llm_stage`` (an ``LLMStage``, a dict of its
    fields, or "llava-video" for the release's K=18 / 50% stage inside the LLM; it raises the pre-LLM retention so
    the mean share over the LLM's layers is ``retention``). Per call, ``video_timestamps`` (one (T,) tensor of
    seconds per video) feeds ST-RoPE. ``encoder`` (off by default): "reuse" or a ``ReuseConfig``/dict:
    tokens unchanged since their key frame (Qwen: key temporal patch) skip the tower's later blocks
    (encoders/reuse.py, encoders/reuse_qwen.py).
    ``chunk_frames`` (Tango only, off by default): the tower encodes each video that many frames at a time (Qwen:
    temporal patches) and each chunk is pruned as it comes (stream.TangoStream), so only kept rows are held for a
    long video; ``max_carry`` (default 256) caps the frames of the still-open segment held across chunks.
    Returns a handle; ``handle.remove()`` or ``with apply(...)`` restores the
    stock model; ``handle.last_stats`` reports the most recent call's counts and times.
    """
    name = type(model).__name__
    if name == "LlavaOnevisionForConditionalGeneration":
        from .llava_ov import LlavaOnevisionHandle

        return LlavaOnevisionHandle(model, method, retention, **opts)
    if name in ("Qwen2_5_VLForConditionalGeneration", "Qwen2VLForConditionalGeneration"):
        from .qwen_vl import QwenVLHandle

        return QwenVLHandle(model, method, retention, **opts)
    if name in ("Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration"):  # same tower and layout
        from .qwen_vl import Qwen3VLHandle

        return Qwen3VLHandle(model, method, retention, **opts)
    if name in ("Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration"):
        from .qwen_vl import Qwen3_5Handle

        return Qwen3_5Handle(model, method, retention, **opts)
    raise ValueError(f"apply() supports {', '.join(SUPPORTED)}; got {name}")


__all__ = ["SUPPORTED", "PruneHandle", "apply"]
