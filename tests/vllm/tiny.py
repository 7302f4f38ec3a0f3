"""Tiny random Qwen2.5-VL / Qwen3-VL (dense, MoE) / Qwen3.5 (dense, MoE) checkpoints for the vLLM tests, built
offline with transformers.

Run with the vLLM venv's python:  python tests/vllm/tiny.py OUT_DIR FAMILY [--wide]  (FAMILY: a key of FRAME_PX)
Text: 2 layers, hidden 128 (head_dim 32: the smallest vLLM's CPU attention takes), byte-level tokenizer (256 bytes +
7 special tokens, no merges) with a chat template. Vision: 2-3 blocks of width 32. Frames of 224 px (Qwen2.5: 14 px
patches, 2 x 2 merged-token windows) / 256 px (Qwen3: 16 px patches) give 8 x 8 merged tokens per temporal patch.
Qwen2.5: tokens_per_second 1, so at 2 fps a temporal patch advances M-RoPE time by 1 and 8 temporal patches span
positions 0..7 like the 8 x 8 grid: transformers 5.19 then continues the text after a video where vLLM does (it
uses start + max(h, w) / merge, vLLM the largest position + 1; they differ for longer videos).
Qwen3-VL-MoE: Qwen3-VL with 4 experts (2 per token) in both layers. Qwen3.5: Qwen3-VL's tower without deepstack
and a hybrid LLM, one Gated DeltaNet layer (2 QK / 4 V heads of 64: vLLM's CPU kernel takes 64 or 128, and
bfloat16 only) then one gated attention layer, partial rotary 0.5; its MoE variant has 4 experts (2 per token) and
the shared expert. All Qwen3 families share one processor.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>"]
IDS = {t: 256 + i for i, t in enumerate(SPECIALS)}
VOCAB = 272  # 263 tokens, padded
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'video' or c['type'] == 'video_url' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'image' or c['type'] == 'image_url' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN3 = ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")  # Qwen3-VL's processor, prompt layout and tower
FRAME_PX = {"qwen2_5_vl": 224, **{f: 256 for f in QWEN3}}
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)  # not square: see transpose_fused_experts


def tokenizer():
    """The benchmark's byte-level tokenizer (its special ids are IDS), with a chat template."""
    from tango_prune.bench.vllm_engine import SPECIALS as BENCH_SPECIALS, byte_tokenizer

    assert BENCH_SPECIALS == SPECIALS
    fast = byte_tokenizer()
    assert [fast.convert_tokens_to_ids(t) for t in SPECIALS] == list(IDS.values())
    fast.chat_template = CHAT_TEMPLATE
    return fast


def text_config(**extra):
    return dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=32, vocab_size=VOCAB, max_position_embeddings=4096,
                bos_token_id=IDS["<|endoftext|>"], eos_token_id=IDS["<|im_end|>"], pad_token_id=IDS["<|endoftext|>"],
                tie_word_embeddings=False, **extra)


# ``--wide`` (measurements only, scripts/measure/vllm_long_video.py): Qwen2.5-VL-7B's tower width in 2 blocks, so
# that the tower's activations, not the tiny LLM, set a long video's memory
WIDE = dict(hidden_size=1280, intermediate_size=3420, num_heads=16)


def build(out: str | Path, family: str, seed: int = 0, vision_overrides: dict | None = None) -> Path:
    import transformers as tf

    out = Path(out)
    torch.manual_seed(seed)
    ids = dict(image_token_id=IDS["<|image_pad|>"], video_token_id=IDS["<|video_pad|>"],
               vision_start_token_id=IDS["<|vision_start|>"], vision_end_token_id=IDS["<|vision_end|>"])
    px = FRAME_PX[family]
    tok = tokenizer()
    if family == "qwen2_5_vl":
        cfg = tf.Qwen2_5_VLConfig(
            text_config=text_config(rope_parameters={"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 1e4}),
            vision_config={**dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=128,
                                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                                  fullatt_block_indexes=[1], in_channels=3, tokens_per_second=1),
                           **(vision_overrides or {})},
            tie_word_embeddings=False, **ids)
        model = tf.Qwen2_5_VLForConditionalGeneration(cfg)
        pixels = dict(min_pixels=px * px, max_pixels=px * px)
        proc = tf.Qwen2_5_VLProcessor(
            image_processor=tf.Qwen2VLImageProcessor(**pixels, size={"shortest_edge": px * px, "longest_edge": px * px}),
            video_processor=tf.Qwen2VLVideoProcessor(size={"shortest_edge": px * px, "longest_edge": px * px},
                                                     do_sample_frames=False),
            tokenizer=tok, chat_template=CHAT_TEMPLATE)
    elif family in QWEN3:
        vision = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=128, patch_size=16,
                      spatial_merge_size=2, temporal_patch_size=2, in_channels=3, num_position_embeddings=64)
        vision.update(vision_overrides or {})
        mrope = {"rope_type": "default", "mrope_section": [4, 6, 6], "mrope_interleaved": True, "rope_theta": 1e4}
        if family.startswith("qwen3_vl"):
            vision["deepstack_visual_indexes"] = [0, 1]
            moe = family == "qwen3_vl_moe"
            # vLLM 0.32's Qwen3-MoE block reads config.norm_topk_prob, which transformers 5.19's Qwen3VLMoeTextConfig
            # does not declare (its router always renormalises the top k: True)
            text = text_config(rope_parameters=mrope,
                               **(dict(MOE, decoder_sparse_step=1, norm_topk_prob=True) if moe else {}))
            cls = tf.Qwen3VLMoeForConditionalGeneration if moe else tf.Qwen3VLForConditionalGeneration
            cfg = (tf.Qwen3VLMoeConfig if moe else tf.Qwen3VLConfig)(text_config=text, vision_config=vision,
                                                                      tie_word_embeddings=False, **ids)
        else:  # Qwen3.5: rotary on half of each 32-wide head (16 dims: sections 3 + 3 + 2 pairs)
            moe = family == "qwen3_5_moe"
            hybrid = dict(layer_types=["linear_attention", "full_attention"], linear_conv_kernel_dim=4,
                          linear_key_head_dim=64, linear_value_head_dim=64, linear_num_key_heads=2,
                          linear_num_value_heads=4, rope_parameters=dict(mrope, mrope_section=[3, 3, 2],
                                                                         partial_rotary_factor=0.5))
            text = text_config(**hybrid, **(dict(MOE, shared_expert_intermediate_size=64) if moe else {}))
            cls = tf.Qwen3_5MoeForConditionalGeneration if moe else tf.Qwen3_5ForConditionalGeneration
            cfg = (tf.Qwen3_5MoeConfig if moe else tf.Qwen3_5Config)(text_config=text, vision_config=vision,
                                                                      tie_word_embeddings=False, **ids)
        model = cls(cfg)
        # Qwen3's video budget counts all frames' pixels: 16 frames of px x px fit exactly. Image and video
        # processors normalise with mean = std = 0.5, as Qwen3-VL's released ones do: vLLM 0.32 normalises video
        # pixels on the device with the *image* processor's mean/std (mm_device_do_normalize), transformers with
        # the video processor's; the Qwen2-VL image defaults (CLIP's) here made the two engines' videos differ
        half = dict(image_mean=[0.5] * 3, image_std=[0.5] * 3)
        proc = tf.Qwen3VLProcessor(
            image_processor=tf.Qwen2VLImageProcessor(size={"shortest_edge": px * px, "longest_edge": px * px},
                                                     patch_size=16, **half),
            video_processor=tf.Qwen3VLVideoProcessor(size={"shortest_edge": 4096, "longest_edge": 16 * px * px},
                                                     patch_size=16, do_sample_frames=False, **half),
            tokenizer=tok, chat_template=CHAT_TEMPLATE)
    else:
        raise ValueError(f"family must be one of {sorted(FRAME_PX)}, got {family!r}")
    # random init gives a near-uniform attention map; sharpen the last block's queries and keys so that the
    # global-query saliency separates tokens clearly (the selection then does not hinge on rounding noise)
    attn = model.model.visual.blocks[-1].attn
    dim = attn.qkv.weight.shape[1]
    with torch.no_grad():
        attn.qkv.weight[: 2 * dim] *= 8.0
    model.generation_config.eos_token_id = IDS["<|im_end|>"]
    model.eval().save_pretrained(out)
    if family == "qwen3_vl_moe":
        transpose_fused_experts(out)
    proc.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def transpose_fused_experts(out: Path) -> None:
    """transformers 5.19 saves Qwen3-VL-MoE's fused experts as it holds them, (experts, out, in); vLLM 0.32 reads
    them as (experts, in, out) (``is_fused_checkpoint_transposed``), the layout transformers' own conversion mapping
    transposes from on load. Write that layout: transformers loads both (it transposes a tensor whose shape does not
    fit, hence no square expert matrices here), vLLM only this one."""
    from safetensors.torch import load_file, save_file

    path = out / "model.safetensors"
    weights = load_file(path)
    for name in weights:
        if name.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
            weights[name] = weights[name].transpose(1, 2).contiguous()
    save_file(weights, path, metadata={"format": "pt"})


if __name__ == "__main__":
    print(build(sys.argv[1], sys.argv[2], vision_overrides=WIDE if sys.argv[3:] == ["--wide"] else None))
