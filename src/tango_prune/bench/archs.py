"""Real Video-LLM shapes (random weights) and an analytic FLOPs model.

Shapes come from the public configs of the checkpoints named here (config.json of each hub repo):
- SigLIP so400m-patch14-384 (LLaVA-OV / LLaVA-Video tower): hidden 1152, MLP 4304, 26 layers as used (the
  HF LLaVA-OV configs keep 26 of 27), 16 heads, 384 px, patch 14 -> 27 x 27 patches, pooled to 14 x 14.
- llava-video-7b is built as transformers' LlavaOnevisionForConditionalGeneration (the class `apply()` adapts), so it
  lays a frame out as that class does: bilinear 27 x 27 -> 14 x 14 = 196 tokens, one newline per video. The
  original LLaVA-Video (lmms-lab/LLaVA-Video-7B-Qwen2; Tango's release, tango/llava_arch.py) average-pools to
  13 x 13 = 169 tokens and adds a newline after every row: 182 per frame, 64 frames in the release, 7% fewer LLM
  tokens than here. Tower and LLM are the same; only the pooled grid differs.
- Qwen2-0.5B (llava-onevision-qwen2-0.5b-ov-hf): hidden 896, MLP 4864, 24 layers, 14 heads, 2 KV heads, vocab 151936.
- Qwen2-7B (llava-onevision-qwen2-7b-ov-hf, LLaVA-Video-7B-Qwen2-hf): hidden 3584, MLP 18944, 28 layers, 28 heads,
  4 KV heads, vocab 152064.
- Qwen2.5-VL-7B-Instruct: ViT depth 32, hidden 1280, MLP 3420 (gated), 16 heads, patch 14, window 112, full
  attention at blocks 7/15/23/31, 2x2 merge to 3584; LLM as Qwen2-7B with M-RoPE sections (16, 24, 24).
- Qwen3-VL-8B-Instruct: ViT depth 27, hidden 1152, MLP 4304 (not gated), 16 heads, patch 16, full attention per
  temporal patch, 2x2 merge to 4096, deepstack mergers after blocks 8/16/24; LLM hidden 4096, MLP 12288, 36 layers,
  32 heads of 128, 8 KV heads, vocab 151936, interleaved M-RoPE sections (24, 20, 20), rope theta 5e6.
- Qwen3.5-9B: its model card (huggingface.co/Qwen/Qwen3.5-9B): LLM hidden 4096, 32 layers laid out as
  8 x (3 x (Gated DeltaNet -> FFN) -> 1 x (Gated Attention -> FFN)), Gated DeltaNet 32 V / 16 QK heads of 128,
  Gated Attention 16 Q / 4 KV heads of 256, rotary dimension 64 (= 256 x 0.25), FFN 12288, vocab 248320 (padded);
  these are also transformers' Qwen3_5TextConfig defaults ("Qwen3.5-9B style"), conv kernel 4. The ViT is Qwen3-VL's
  without deepstack: depth 27, hidden 1152, MLP 4304, 16 heads, patch 16, 2304 position embeddings, 2x2 merge to
  4096 (the LLM width); interleaved M-RoPE sections (11, 11, 10), rope theta 1e7. The vision and rope values are
  read from config.json files of fine-tunes that name Qwen/Qwen3.5-9B as their base and keep its architecture
  (e.g. khtsly/Mini-Coder) and match transformers' Qwen3_5VisionConfig defaults; the official config.json itself
  was not at hand.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

SIGLIP = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
              image_size=384, patch_size=14)
QWEN2_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)
QWEN2_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                num_key_value_heads=4, vocab_size=152064)
QWEN25_VIT = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=[7, 15, 23, 31], in_channels=3, tokens_per_second=2)

QWEN3_VIT = dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096, patch_size=16,
                 spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                 deepstack_visual_indexes=[8, 16, 24], in_channels=3, hidden_act="gelu_pytorch_tanh")
QWEN3_8B = dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128, vocab_size=151936)

# Qwen3.5-9B (sources above): Qwen3-VL's ViT without deepstack; a hybrid LLM, 3 Gated DeltaNet layers per full
# (gated) attention layer
QWEN35_VIT = {k: v for k, v in QWEN3_VIT.items() if k != "deepstack_visual_indexes"}
QWEN35_9B = dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=32, num_attention_heads=16,
                 num_key_value_heads=4, head_dim=256, vocab_size=248320, linear_num_key_heads=16,
                 linear_num_value_heads=32, linear_key_head_dim=128, linear_value_head_dim=128, linear_conv_kernel_dim=4)
QWEN35_ROPE = {"rope_type": "default", "mrope_section": [11, 11, 10], "mrope_interleaved": True, "rope_theta": 1e7,
               "partial_rotary_factor": 0.25}

# Qwen2.5-VL-3B-Instruct's public config.json: a 36-layer 2048-wide LLM (tied embeddings) under the same ViT.
QWEN25_3B = dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)

ARCHS = {
    "llava-ov-0.5b": ("llava", SIGLIP, QWEN2_05B),
    "llava-ov-7b": ("llava", SIGLIP, QWEN2_7B),
    "llava-video-7b": ("llava", SIGLIP, QWEN2_7B),
    "qwen2.5-vl-3b": ("qwen", dict(QWEN25_VIT, out_hidden_size=2048), QWEN25_3B),
    "qwen2.5-vl-7b": ("qwen", QWEN25_VIT, QWEN2_7B),
    "qwen3-vl-8b": ("qwen3", QWEN3_VIT, QWEN3_8B),
    # Qwen3.5 lays out prompts and positions as Qwen3-VL does (family "qwen3"); build() tells it by its hybrid LLM
    "qwen3.5-9b": ("qwen3", QWEN35_VIT, QWEN35_9B),
}


def build(arch: str, dtype, layers: int | None = None, vision_layers: int | None = None, image_size: int | None = None):
    """The architecture with random weights in ``dtype``: every matrix N(0, 0.02), norm weights 1, biases 0 (no
    per-module init passes, no uninitialised memory: denormals and NaNs would distort timings). ``image_size``
    (LLaVA towers): frames of that many pixels instead of the model's (a real-width tower at a modest resolution)."""
    import torch
    import transformers as tf

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    family, vis, txt = ARCHS[arch]
    txt = dict(txt, **({"num_hidden_layers": layers} if layers else {}))
    V = txt["vocab_size"]  # special tokens at the top of the vocabulary: timings do not depend on their ids
    if image_size is not None and family != "llava":
        raise ValueError(f"image_size works for the LLaVA archs; {arch} sizes its frames by the processor's grid")
    if family == "llava":
        vis = dict(vis, **({"num_hidden_layers": vision_layers} if vision_layers else {}),
                   **({"image_size": image_size} if image_size else {}))
        cfg = tf.LlavaOnevisionConfig(vision_config=tf.SiglipVisionConfig(**vis), text_config=tf.Qwen2Config(**txt),
                                      image_token_id=V - 3, video_token_id=V - 2, vision_feature_layer=-1)
        cls = tf.LlavaOnevisionForConditionalGeneration
    elif family == "qwen3" and is_hybrid(txt):
        if txt["num_hidden_layers"] % 4:
            raise ValueError(f"{arch}: --layers must be a multiple of 4 (3 linear + 1 full attention layer per 4)")
        vis = dict(vis, **({"depth": vision_layers} if vision_layers else {}))
        kinds = (["linear_attention"] * 3 + ["full_attention"]) * (txt["num_hidden_layers"] // 4)
        cfg = tf.Qwen3_5Config(text_config=dict(txt, layer_types=kinds, rope_parameters=QWEN35_ROPE),
                               vision_config=vis, image_token_id=V - 3, video_token_id=V - 2,
                               vision_start_token_id=V - 5, vision_end_token_id=V - 4)
        cls = tf.Qwen3_5ForConditionalGeneration
    elif family == "qwen3":
        vis = dict(vis, **({"depth": vision_layers} if vision_layers else {}))
        if vision_layers:  # keep a deepstack level per cut model, spread as in the full one
            vis["deepstack_visual_indexes"] = [i for i in vis["deepstack_visual_indexes"] if i < vision_layers] or [0]
        cfg = tf.Qwen3VLConfig(
            text_config=dict(txt, rope_parameters={"rope_type": "default", "mrope_section": [24, 20, 20],
                                                   "mrope_interleaved": True, "rope_theta": 5e6}),
            vision_config=vis, image_token_id=V - 3, video_token_id=V - 2, vision_start_token_id=V - 5,
            vision_end_token_id=V - 4)
        cls = tf.Qwen3VLForConditionalGeneration
    else:
        vis = dict(vis, **({"depth": vision_layers} if vision_layers else {}))
        if vision_layers:
            vis["fullatt_block_indexes"] = [i for i in vis["fullatt_block_indexes"] if i < vision_layers] or [vision_layers - 1]
        cfg = tf.Qwen2_5_VLConfig(
            text_config=dict(txt, rope_parameters={"rope_type": "default", "mrope_section": _mrope(txt), "rope_theta": 1e6}),
            vision_config=vis, image_token_id=V - 3, video_token_id=V - 2, vision_start_token_id=V - 5,
            vision_end_token_id=V - 4)
        cls = tf.Qwen2_5_VLForConditionalGeneration
    from transformers.initialization import no_init_weights

    with no_init_weights():  # transformers' own switch: allocate, skip its per-module init passes
        model = cls._from_config(cfg, dtype=dtype)
    # then one fill per tensor: N(0, 0.02) weights, unit norms, zero biases. The weights tile one block of N(0, 0.02)
    # draws of prime length (rows of a matrix are distinct shifts of it): drawing 7B normals took ~40 s on a 2-core
    # CPU, the copy takes ~2 s, and a matmul's time does not depend on the values.
    block = torch.empty(_TILE).normal_(0.0, 0.02, generator=torch.Generator().manual_seed(0)).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                _tile_into(p.data.view(-1), block)
            else:
                p.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
    return model.eval(), family


_TILE = 1_048_573  # prime: no matrix width divides it


def _tile_into(flat, block) -> None:
    n, k = flat.numel(), block.numel()
    whole = n // k
    if whole:
        flat[: whole * k].view(whole, k).copy_(block.expand(whole, k))
    flat[whole * k:].copy_(block[: n - whole * k])


def is_hybrid(txt: dict) -> bool:
    """A Qwen3.5 LLM (Gated DeltaNet layers between the attention layers)?"""
    return "linear_num_value_heads" in txt


def _mrope(txt: dict) -> list[int]:
    """Qwen2.5-VL's M-RoPE split (16, 24, 24) of a 128-wide head, scaled to the head size."""
    half = txt["hidden_size"] // txt["num_attention_heads"] // 2
    return [half // 4, half * 3 // 8, half - half // 4 - half * 3 // 8]


@dataclass
class Shape:
    tokens: int
    hidden: int
    mlp: int
    layers: int
    gated: bool = False
    span: int | None = None  # attention span per token (None: all tokens)


def vit_flops(s: Shape, patch_dim: int) -> float:
    """Matmul FLOPs (2 per multiply-add) of a ViT over ``s.tokens`` tokens: patch embedding, per layer q/k/v/o
    projections, attention scores and values, MLP (3 matrices when gated)."""
    per_layer = 2 * s.tokens * (4 * s.hidden * s.hidden + (3 if s.gated else 2) * s.hidden * s.mlp)
    span = s.tokens if s.span is None else s.span
    per_layer += 2 * 2 * s.tokens * span * s.hidden
    return 2 * s.tokens * patch_dim * s.hidden + s.layers * per_layer


def llm_prefill_flops(tokens: int, hidden: int, mlp: int, layers: int, kv_dim: int, vocab: int) -> float:
    """Matmul FLOPs of a causal decoder prefill: per layer q and o (hidden^2 each), k and v (hidden x kv_dim each),
    a gated MLP (3 x hidden x mlp), causal attention (scores + values over half the square), and the LM head on the
    last token only (as generate does)."""
    per_layer = 2 * tokens * (2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * mlp)
    per_layer += 2 * 2 * (tokens * (tokens + 1) / 2) * hidden
    return layers * per_layer + 2 * hidden * vocab


def hybrid_prefill_flops(tokens: int, t) -> float:
    """Matmul FLOPs of a Qwen3.5 prefill (``t``: its text config). Full attention layers: q with its output gate
    (hidden x 2 heads x head_dim), k and v, o, causal attention; Gated DeltaNet layers: the q/k/v, z, b and a
    projections, the depthwise conv, out; the delta rule counted in its recurrent form (per token and value head
    three products with the key_dim x value_dim state: decay-read, update, query-read; the chunked kernel's
    in-chunk terms are left out); every layer a gated MLP; the LM head on the last token."""
    T, d = tokens, t.hidden_size
    qd, kvd = t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    kd, vd = t.linear_num_key_heads * t.linear_key_head_dim, t.linear_num_value_heads * t.linear_value_head_dim
    mlp = 2 * T * 3 * d * t.intermediate_size
    full = 2 * T * (d * 2 * qd + 2 * d * kvd + qd * d) + 2 * 2 * (T * (T + 1) / 2) * qd + mlp
    conv = 2 * kd + vd
    linear = (2 * T * (d * conv + d * vd + 2 * d * t.linear_num_value_heads + vd * d) + 2 * T * t.linear_conv_kernel_dim * conv
              + 2 * 3 * T * t.linear_num_value_heads * t.linear_key_head_dim * t.linear_value_head_dim + mlp)
    n_full = sum(k == "full_attention" for k in t.layer_types[: t.num_hidden_layers])
    return n_full * full + (t.num_hidden_layers - n_full) * linear + 2 * d * t.vocab_size


def flops(model, family: str, frames: int, llm_tokens: int) -> tuple[float, float]:
    """(vision FLOPs for ``frames`` frames, LLM prefill FLOPs for a ``llm_tokens``-token prompt) of ``model``."""
    cfg = model.config
    t = cfg.text_config
    kv = t.num_key_value_heads * (t.hidden_size // t.num_attention_heads)
    if "linear_attention" in (getattr(t, "layer_types", None) or ()):
        llm = hybrid_prefill_flops(llm_tokens, t)
    else:
        llm = llm_prefill_flops(llm_tokens, t.hidden_size, t.intermediate_size, t.num_hidden_layers, kv, t.vocab_size)
    v = cfg.vision_config
    if family == "llava":
        n = (v.image_size // v.patch_size) ** 2
        vis = frames * vit_flops(Shape(n, v.hidden_size, v.intermediate_size, v.num_hidden_layers), 3 * v.patch_size**2)
        vis += frames * 2 * n * (v.hidden_size * t.hidden_size + t.hidden_size * t.hidden_size)  # projector
    elif family == "qwen3":
        t = math.ceil(frames / v.temporal_patch_size)
        per_frame = 28 * 28  # 448 px frames: 28 x 28 patches of 16 px per temporal patch
        n = t * per_frame
        vis = vit_flops(Shape(n, v.hidden_size, v.intermediate_size, v.depth, span=per_frame),
                        3 * v.temporal_patch_size * v.patch_size**2)
        m, h = v.spatial_merge_size**2, v.hidden_size
        vis += (1 + len(getattr(v, "deepstack_visual_indexes", None) or ())) * 2 * (n // m) * (m * h * m * h + m * h * v.out_hidden_size)
    else:
        n = math.ceil(frames / v.temporal_patch_size) * 28 * 28  # 392 px frames: 28 x 28 patches per temporal patch
        win = (v.window_size // v.patch_size) ** 2
        full = len(v.fullatt_block_indexes)
        per_frame = n // max(1, math.ceil(frames / v.temporal_patch_size))
        base = vit_flops(Shape(n, v.hidden_size, v.intermediate_size, v.depth, gated=True, span=win),
                         3 * v.temporal_patch_size * v.patch_size**2)
        # full-attention blocks attend within a temporal patch's whole frame instead of a window
        vis = base + full * 2 * 2 * n * (per_frame - win) * v.hidden_size
        m = v.spatial_merge_size**2
        vis += 2 * (n // m) * (m * v.hidden_size * m * v.hidden_size + m * v.hidden_size * v.out_hidden_size)
    return float(vis), float(llm)
