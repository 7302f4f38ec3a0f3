"""Models without a hub: a local checkpoint dir, or a tiny random model of a family built from its config."""
from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("llava-onevision", "qwen2.5-vl", "qwen3-vl", "qwen3-vl-moe", "qwen3.5", "qwen3.5-moe")

# token ids of the tiny models (their vocabularies are 400 tokens)
TINY_IDS = {"pad": 0, "bos": 1, "eos": 2, "vision_end": 395, "vision_start": 396, "image": 397, "video": 398}


def checkpoint_class(path: str | Path):
    """The transformers class of a local checkpoint dir, if it is one we support (reads config.json only)."""
    import json

    import transformers

    from . import SUPPORTED

    p = Path(path)
    if not (p / "config.json").is_file():
        raise ValueError(f"{path} is not a Hugging Face checkpoint dir (no config.json); download it first, then pass its path")
    try:
        arch = (json.loads((p / "config.json").read_text()).get("architectures") or ["?"])[0]
    except (ValueError, AttributeError):
        raise ValueError(f"{p / 'config.json'} is not valid JSON; is {path} a complete checkpoint?") from None
    if arch not in SUPPORTED:
        raise ValueError(f"{path} holds a {arch}; supported: {', '.join(SUPPORTED)}")
    return getattr(transformers, arch)


def load_model(path: str | Path, dtype: torch.dtype | str = "auto", device: str | None = None):
    """A supported Video LLM from a local Hugging Face checkpoint dir (never the network)."""
    cls = checkpoint_class(path)
    model = cls.from_pretrained(Path(path), local_files_only=True, dtype=dtype)
    return (model.to(device) if device else model).eval()


def tiny_model(family: str, seed: int = 0):
    """A random model of ``family`` small enough for tests (a few MB), built from its config.

    llava-onevision: SigLIP 112 px / 14 -> 8x8 patches, pooled to 4x4 tokens per frame, Qwen2 LLM.
    qwen2.5-vl: 14 px patches, 2x2 merge, temporal patch 2, window attention, M-RoPE sections (2, 3, 3).
    qwen3-vl: 16 px patches, 2x2 merge, temporal patch 2, deepstack from ViT blocks 0 and 1 of 3, interleaved M-RoPE;
    qwen3-vl-moe the same with an MoE LLM (4 experts, 2 per token).
    qwen3.5 / qwen3.5-moe: Qwen3-VL's tower without deepstack; a hybrid LLM of one gated delta net (linear attention)
    layer then one full attention layer (Qwen3.5's pattern, which repeats 3 linear + 1 full), partial rotary 0.5;
    the MoE variant has 4 experts, 2 per token, plus the shared expert.
    """
    import transformers as tf

    torch.manual_seed(seed)
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                vocab_size=400, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if family == "llava-onevision":
        cfg = tf.LlavaOnevisionConfig(
            vision_config=tf.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                num_attention_heads=2, image_size=112, patch_size=14),
            text_config=tf.Qwen2Config(**text), image_token_id=TINY_IDS["image"], video_token_id=TINY_IDS["video"],
            vision_feature_layer=-1)
        return tf.LlavaOnevisionForConditionalGeneration(cfg).eval()
    if family == "qwen2.5-vl":
        cfg = tf.Qwen2_5_VLConfig(
            text_config=dict(text, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4}),
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                               patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                               fullatt_block_indexes=[1], in_channels=3, tokens_per_second=2),
            image_token_id=TINY_IDS["image"], video_token_id=TINY_IDS["video"],
            vision_start_token_id=TINY_IDS["vision_start"], vision_end_token_id=TINY_IDS["vision_end"])
        return tf.Qwen2_5_VLForConditionalGeneration(cfg).eval()
    if family in ("qwen3-vl", "qwen3-vl-moe"):
        moe = family == "qwen3-vl-moe"
        extra = dict(moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2) if moe else {}
        cfg = (tf.Qwen3VLMoeConfig if moe else tf.Qwen3VLConfig)(
            text_config=dict(text, head_dim=16, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                                                 "mrope_interleaved": True, "rope_theta": 1e4}, **extra),
            vision_config=dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                               patch_size=16, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                               num_position_embeddings=64, deepstack_visual_indexes=[0, 1]),
            image_token_id=TINY_IDS["image"], video_token_id=TINY_IDS["video"],
            vision_start_token_id=TINY_IDS["vision_start"], vision_end_token_id=TINY_IDS["vision_end"])
        return (tf.Qwen3VLMoeForConditionalGeneration if moe else tf.Qwen3VLForConditionalGeneration)(cfg).eval()
    if family in ("qwen3.5", "qwen3.5-moe"):
        hybrid = dict(text, head_dim=16, layer_types=["linear_attention", "full_attention"], linear_conv_kernel_dim=4,
                      linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
                      rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True,
                                       "rope_theta": 1e4, "partial_rotary_factor": 0.5})
        moe = family == "qwen3.5-moe"
        if moe:
            hybrid.update(moe_intermediate_size=32, shared_expert_intermediate_size=32, num_experts=4, num_experts_per_tok=2)
        cfg = (tf.Qwen3_5MoeConfig if moe else tf.Qwen3_5Config)(
            text_config=hybrid,
            vision_config=dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                               patch_size=16, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                               num_position_embeddings=64),
            image_token_id=TINY_IDS["image"], video_token_id=TINY_IDS["video"],
            vision_start_token_id=TINY_IDS["vision_start"], vision_end_token_id=TINY_IDS["vision_end"])
        return (tf.Qwen3_5MoeForConditionalGeneration if moe else tf.Qwen3_5ForConditionalGeneration)(cfg).eval()
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def tiny_tokenizer(names: dict[str, str]):
    """A word-level tokenizer for the tiny models' vocabulary of 400: ``names`` maps keys of TINY_IDS to the special
    tokens a family's processor expects (e.g. {"video": "<video>"}), each at its TINY_IDS id; every other id decodes
    to a word ``w<id>`` and id 3 is <unk>. Saved next to a tiny model, it makes a checkpoint dir that loads offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(400)}
    for key, tok in names.items():
        del vocab[f"w{TINY_IDS[key]}"]
        vocab[tok] = TINY_IDS[key]
    del vocab["w3"]
    vocab["<unk>"] = 3
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t.add_special_tokens(list(names.values()))
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token=names.get("pad", "<pad>"),
                                   bos_token=names.get("bos", "<bos>"), eos_token=names.get("eos", "<eos>"),
                                   unk_token="<unk>")
