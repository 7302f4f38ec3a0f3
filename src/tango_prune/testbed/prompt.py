"""What a testbed is given and how its answer is read: tokenizers, prompts with their video placeholders, pixels.

v1 (``lm == "scratch"``): a word-level vocabulary over the templates' words; ``<bos>``, the placeholders, then
``{question} (A) ... (D) ... answer with the letter of the option :``. v2 (``"smollm2"``): SmolLM2's tokenizer with
``<image>`` and ``<video>`` added (ids 49152, 49153) and its chat format without a system turn:
``<|im_start|>user\\n`` + placeholders + ``\\n{question}\\n(A) ...\\nAnswer with the option's letter.<|im_end|>\\n
<|im_start|>assistant\\n``. Either way the answer is the letter (A-D) with the highest logit at the last position.
"""
from __future__ import annotations

import re

import torch

from .data import COLOURS, DIRECTIONS, QUADRANTS, SHAPES, Sample
from .variants import Variant

LETTERS = ("A", "B", "C", "D")
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>", "<image>", "<video>"]
_WORD = re.compile(r"<[a-z]+>|[a-z]+|\d+|[^\sa-z\d]")
ADDED = ("<image>", "<video>")  # appended to SmolLM2's 49152-token vocabulary; their embedding rows are zero
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _words() -> list[str]:
    text = " ".join([
        "a object appears for moment what shape is it which way does the move how many times two objects appear one",
        "after other first where in picture answer with letter of option", *COLOURS, *SHAPES, *DIRECTIONS,
        *QUADRANTS, "1 2 3 4", " ".join(LETTERS).lower(), "( ) . ? : ,"])
    seen: dict[str, None] = {}
    for w in _WORD.findall(text.lower()):
        seen.setdefault(w, None)
    return list(seen)


VOCAB = {w: i for i, w in enumerate(SPECIALS + _words())}  # v1's; its order is part of the committed weights


def _word_tokenizer():
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Split(Regex(_WORD.pattern), behavior="isolated")])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", padding_side="left")


def tokenizer(v: Variant, cache_dir=None):
    """The variant's ``PreTrainedTokenizerFast``, left padding (v1: word-level, lower-cased, unknown -> <unk>)."""
    if v.lm == "scratch":
        return _word_tokenizer()
    from . import smollm2

    tok = smollm2.tokenizer(cache_dir)
    tok.add_tokens(list(ADDED), special_tokens=True)
    tok.padding_side = "left"
    tok.chat_template = CHAT_TEMPLATE
    return tok


_TOK: dict = {}


def _tok(v: Variant):
    if v.name not in _TOK:
        _TOK[v.name] = tokenizer(v)
    return _TOK[v.name]


def prompt_text(question: str, options: list[str]) -> str:
    """v1's prompt after the video (also how a checkpoint is asked the testbed's questions)."""
    opts = " ".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))
    return f"{question} {opts} answer with the letter of the option :"


def prompt_parts(question: str, options: list[str]) -> tuple[str, str]:
    """v2's text before and after the video placeholders."""
    opts = "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))
    return "<|im_start|>user\n", f"\n{question}\n{opts}\nAnswer with the option's letter.<|im_end|>\n<|im_start|>assistant\n"


def input_ids(v: Variant, sample: Sample | tuple[str, list[str]], frames: int | None = None, *,
              video_tokens: int | None = None, tok=None) -> torch.Tensor:
    """(1, N): the prompt around ``video_tokens`` <video> placeholders (default: ``v.video_tokens(frames)``, frames
    the sample's own)."""
    q, o = (sample.question, sample.options) if isinstance(sample, Sample) else sample
    if video_tokens is None:
        if frames is None:
            if not isinstance(sample, Sample):
                raise ValueError("pass frames= or video_tokens= with a (question, options) pair")
            frames = sample.frames.shape[0]
        video_tokens = v.video_tokens(frames)
    if v.lm == "scratch":
        ids = [VOCAB.get(w, VOCAB["<unk>"]) for w in _WORD.findall(prompt_text(q, o).lower())]
        return torch.tensor([[VOCAB["<bos>"]] + [VOCAB["<video>"]] * video_tokens + ids])
    tok = tok or _tok(v)
    before, after = prompt_parts(q, o)
    vid = tok.convert_tokens_to_ids("<video>")
    return torch.tensor([tok(before, add_special_tokens=False).input_ids + [vid] * video_tokens
                         + tok(after, add_special_tokens=False).input_ids])


def letter_ids(v: Variant, tok=None) -> torch.Tensor:
    if v.lm == "scratch":
        return torch.tensor([VOCAB[x.lower()] for x in LETTERS])
    tok = tok or _tok(v)
    return torch.tensor([tok.convert_tokens_to_ids(x) for x in LETTERS])


def answer(v: Variant, logits: torch.Tensor) -> int:
    """Index (0-3) of the letter with the highest logit at the last position."""
    return int(logits[..., -1, letter_ids(v)].float().argmax(-1).reshape(-1)[0])


def pixel_values(v: Variant, frames: torch.Tensor) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (1, T, 3, S, S), S = v.image: antialiased resize, the tower's ImageNet normalisation."""
    from ..encoders.vit_s import MEAN, STD

    x = frames.permute(0, 3, 1, 2).float().div(255)
    x = torch.nn.functional.interpolate(x, size=(v.image, v.image), mode="bilinear", antialias=True, align_corners=False)
    return ((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)).unsqueeze(0)


def inputs(v: Variant, sample: Sample, dtype: torch.dtype) -> dict:
    """The model's inputs for a sample: ``model(**inputs(...))`` answers it."""
    return {"input_ids": input_ids(v, sample), "pixel_values_videos": pixel_values(v, sample.frames).to(dtype),
            "video_timestamps": [sample.timestamps]}
