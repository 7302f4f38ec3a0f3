"""The testbeds as configuration. v1 and v2 share every module; what differs between them is here: the language
model, the frame size (hence the token grid), how their training clips are drawn, and their training defaults.

- ``V1`` ("testbed"): 224 px frames -> 8 x 8 tokens per frame; a 4-layer, 256-wide Qwen2 decoder with a word-level
  vocabulary, trained here whole.
- ``V2`` ("testbed-v2"): 112 px -> 4 x 4 tokens per frame; SmolLM2-135M-Instruct, pretrained, frozen, with LoRA
  factors trained here (merged at load).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import data

HERE = Path(__file__).resolve().parent
PATCH = 14  # the ViT-S/14's patch side


@dataclass(frozen=True)
class Variant:
    name: str
    weights: Path  # the committed weights
    image: int  # frame side the tower sees; the class pools its patch grid 2 x 2
    lm: str  # "scratch": trained here whole; "smollm2": pretrained (testbed.smollm2), frozen, LoRA on top
    clips: data.Clips  # how its training clips are drawn
    # train.py's defaults for this variant (each a flag there); v1's and v2's runs behind the committed weights
    train: dict = field(default_factory=dict)
    # how the CLI prunes it unless told otherwise: v1 read place and time off the 1-D positions (it only ever saw
    # one layout), so with the shortened sequence renumbered it answers at chance; v2 keeps v1's setting until the
    # layout probe says it reads them from content (docs/testbed.md)
    positions: str = "original"

    @property
    def grid(self) -> int:
        """Tokens per frame side after the class's 2 x 2 pooling."""
        return self.image // PATCH // 2

    def video_tokens(self, frames: int) -> int:
        """Video placeholders of a clip: every frame's tokens and one image_newline."""
        return frames * self.grid**2 + 1


# None: lm_lr follows --lr (v1's one learning rate for the decoder), shape_aux follows --aux (v2's heads had one weight)
V1 = Variant("testbed", HERE / "testbed.pt", 224, "scratch", data.V1, train=dict(
    cache="out/testbed_cache", dir="out/testbed", batch=8, lr=1e-3, proj_lr_mult=3.0, lm_lr=None, lora=0,
    weight_decay=0.01, steps=0, minutes=60, warmup=50, held=200, eval_every=200, log_every=25, ce="letters",
    shape_aux=0.0, aux_layer=2, shape_min=0.25))
V2 = Variant("testbed-v2", HERE / "testbed_v2.pt", 112, "smollm2", data.V2, train=dict(
    cache="out/testbed_v2/cache", dir="out/testbed_v2", batch=4, lr=2e-4, proj_lr_mult=1.0, lm_lr=2e-4, lora=16,
    weight_decay=0.0, steps=6000, minutes=0, warmup=20, held=100, eval_every=50, log_every=5, ce="vocab",
    shape_aux=None, aux_layer=0, shape_min=0.05))
VARIANTS = {v.name: v for v in (V1, V2)}


def get(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"no testbed named {name!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def resolve(spec: str) -> tuple[Variant, Path | None] | None:
    """A model spec naming a testbed -> (variant, weights file or None for the committed one); None if it names
    none. 'testbed', 'testbed-v2', 'NAME:FILE' (that variant's weights or a training checkpoint), or an existing
    .pt file (v1's weights, as before v2 existed)."""
    name, _, path = spec.partition(":")
    if name in VARIANTS:
        return VARIANTS[name], Path(path) if path else None
    if spec.endswith(".pt") and Path(spec).is_file():
        return V1, Path(spec)
    return None
