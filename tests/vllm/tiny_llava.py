"""A tiny random LLaVA-OneVision checkpoint dir that both vLLM and transformers load offline.

zoo's tiny model config (SigLIP 112 px / 14 -> 8 x 8 patches pooled to 4 x 4 per frame, 2-layer Qwen2 with 2 heads
of 32, vocab 400), a
word-level tokenizer whose ids match its <image>/<video> tokens, and LLaVA-OV image/video processor configs at
112 px (so frames of 112 x 112 are not resized). fp32, a few MB.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

FRAMES, SIDE = 8, 112  # the test video: 8 frames of 112 x 112 -> 8 x 16 pooled tokens
PINPOINTS = [[112, 112], [112, 224], [224, 112], [224, 224]]
CHAT_TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"


def build(path: str | Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor,
                              PreTrainedTokenizerFast)

    from tango_prune.models.zoo import TINY_IDS, tiny_model

    path = Path(path)
    names = {"pad": "<pad>", "bos": "<bos>", "eos": "<eos>", "image": "<image>", "video": "<video>"}
    vocab = {f"w{i}": i for i in range(400)}  # every id decodes to something
    for key, tok in names.items():
        del vocab[f"w{TINY_IDS[key]}"]
        vocab[tok] = TINY_IDS[key]
    del vocab["w3"]
    vocab["<unk>"] = 3
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t.add_special_tokens(list(names.values()))
    tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                  unk_token="<unk>")
    import torch
    from transformers import LlavaOnevisionForConditionalGeneration

    cfg = tiny_model("llava-onevision").config
    # vLLM's CPU attention takes head sizes of 32 and up: 2 heads of 32 (1 KV head) instead of zoo's 4 of 16
    cfg.text_config.num_attention_heads, cfg.text_config.num_key_value_heads = 2, 1
    cfg.text_config.head_dim = 32
    cfg.image_grid_pinpoints = PINPOINTS
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration(cfg).eval()
    model.save_pretrained(path)
    _hub_layout(path / "model.safetensors")
    size = {"height": SIDE, "width": SIDE}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=PINPOINTS),
        video_processor=LlavaOnevisionVideoProcessor(size=size), tokenizer=tok, chat_template=CHAT_TEMPLATE,
        num_image_tokens=(SIDE // 14) ** 2, vision_feature_select_strategy=model.config.vision_feature_select_strategy)
    processor.save_pretrained(path)
    tok.save_pretrained(path)
    siglip_head(path / "siglip_head")
    return path


def siglip_head(path: Path) -> Path:
    """A tiny SigLIP with its attention-pooling head (what ``siglip_head=`` points at; LLaVA ships without it)."""
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(1)
    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                         image_size=SIDE, patch_size=14, vision_use_head=True)).save_pretrained(path)
    return path


def _hub_layout(file: Path) -> None:
    """transformers 5 saves the SigLIP tower as ``vision_tower.*``; the hub's LLaVA-OV checkpoints (and so vLLM's
    loader) name it ``vision_tower.vision_model.*``. transformers loads either."""
    from safetensors.torch import load_file, save_file

    sd = load_file(file)
    old = "vision_tower."
    if not any(k.startswith(old + "vision_model.") for k in sd):
        sd = {("vision_tower.vision_model." + k[len(old):] if k.startswith(old) else k): v for k, v in sd.items()}
        save_file(sd, file, metadata={"format": "pt"})


def video(seed: int = 0) -> np.ndarray:
    """(FRAMES, SIDE, SIDE, 3) uint8: smooth random blobs that drift, so consecutive frames are similar."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(FRAMES + 4, 8, 8, 3)).astype(np.float32)
    up = base.repeat(SIDE // 8, axis=1).repeat(SIDE // 8, axis=2)
    frames = (up[:-4] * 0.6 + up[4:] * 0.4) + rng.normal(0, 6, size=(FRAMES, SIDE, SIDE, 3))
    return np.clip(frames, 0, 255).astype(np.uint8)


PROMPT = "<bos> w10 w11 w12 <video> w20 w21 w22 w23"
TEXT_TOKENS = 8  # PROMPT's tokens besides <video>
PROMPT_TWO = "<bos> w10 <video> w11 <video> w12"
VIDEO_ID = 398  # zoo.TINY_IDS["video"]
