"""The encoder stage (encoders/reuse.py) at a real shape: what it skips on real clips, what that costs in fidelity,
and what it buys in time to first token.

Random weights carry no redundancy: a random tower sees every frame as new. So the share of tokens the stage skips
is measured where it is real, on the pretrained ViT-S (DINOv2-small layout) at the same patch grid as the model's
tower (LLaVA-OneVision's SigLIP at 384 px: 27 x 27; ViT-S at 378 px), on 16 frames of a real clip; that pattern
(which tokens of which frames run the blocks after the gate) then drives the random-weight tower at full size.
Per clip: computed share, per-token cosine of the stage's final features against the stock forward (median, 5th
percentile), Jaccard of Tango's kept set with and without the stage (on ViT-S's tokens pooled as LLaVA-OV pools),
and TTFT of Tango + stage against Tango alone and stock, in one run.
"""
from __future__ import annotations

import math
import statistics

import torch
import torch.nn.functional as F

from ..encoders import reuse, vit_s
from ..models.llava_ov import LlavaOnevisionHandle
from ..models.qwen_vl import QwenVLHandle
from ..types import VideoTokens


class PatternHandle(LlavaOnevisionHandle):
    """The LLaVA-OV adapter whose stage follows a given pattern instead of its gate (random weights, see above)."""

    def __init__(self, model, pattern: torch.Tensor, cfg: reuse.ReuseConfig) -> None:
        super().__init__(model, "none", 1.0, encoder=cfg)
        self.pattern = pattern

    def _stage(self, pixels, keep):
        return reuse.encode(self.tower, pixels, self.encoder, keep=keep, computed=self.pattern)


class QwenPatternHandle(QwenVLHandle):
    """The Qwen adapter whose stage follows a given raster pattern (temporal patches, patches) instead of its gate."""

    def __init__(self, model, pattern: torch.Tensor, cfg: reuse.ReuseConfig) -> None:
        super().__init__(model, "none", 1.0, encoder=cfg)
        self.pattern = pattern

    def reuse_pattern(self, t, h, w):
        from ..encoders.reuse_qwen import tower_rows

        if tuple(self.pattern.shape) != (t, h * w):
            raise ValueError(f"the pattern is {tuple(self.pattern.shape)}, the video ({t}, {h * w})")
        return self.pattern[:, tower_rows(self.model.model.visual, h, w).to(self.pattern.device)]


def _pool(vt: VideoTokens) -> VideoTokens:
    """LLaVA-OV's 2 x 2 bilinear pooling (ceil), on features and saliency."""
    T, h, w = vt.grid
    side = (math.ceil(h / 2), math.ceil(w / 2))
    f = F.interpolate(vt.features.float().reshape(T, h, w, -1).permute(0, 3, 1, 2), size=side, mode="bilinear")
    s = F.interpolate(vt.saliency.float().reshape(T, 1, h, w), size=side, mode="bilinear")
    return VideoTokens(f.flatten(2).transpose(1, 2), s.flatten(1), (T, *side), vt.timestamps)


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = set(a.tolist()), set(b.tolist())
    return len(a & b) / max(1, len(a | b))


@torch.no_grad()
def clip_fidelity(vit, clip: str, frames: int, cfg: reuse.ReuseConfig, px: int, retention: float,
                  cache: dict | None = None, pairs: bool = False) -> dict:
    """ViT-S on ``frames`` frames of ``clip`` at ``px``: stock vs stage. Returns the numbers and the pattern.
    ``cache`` keeps the frames and stock tokens per (clip, frames, px) across calls (a sweep over settings).
    ``pairs``: each two frames averaged into one (a Qwen temporal patch embeds both linearly)."""
    from ..methods import get_method
    from ..video import read_frames, sample_clip

    cache = {} if cache is None else cache
    key = (clip, frames, px)
    if key not in cache:
        fr, ts = read_frames(sample_clip(clip), frames)
        if pairs:
            fr = ((fr[0::2].float() + fr[1::2].float()) / 2).round().to(torch.uint8)
            ts = (ts[0::2] + ts[1::2]) / 2
        cache[key] = fr, ts, vit_s.encode(vit, fr, ts, size=px)
    fr, ts, stock = cache[key]
    staged, mask = vit_s.encode_reuse(vit, fr, cfg, ts, size=px)
    cos = F.cosine_similarity(staged.features.float(), stock.features.float(), dim=-1).flatten()
    tango = get_method("tango")(retention=retention)
    kept = [tango(_pool(v)).index for v in (stock, staged)]
    patches = mask[:, 1:]
    return {"clip": clip, "computed": float(patches.float().mean()), "key_frames": int(mask.all(1).sum()),
            "cos_median": float(cos.median()), "cos_p5": float(cos.quantile(0.05)), "jaccard": jaccard(*kept),
            "pattern": patches}


def run(arch: str, frames: int, clips: list[str], cfgs: list[reuse.ReuseConfig], retention: float = 0.1, repeats: int = 1,
        dtype=torch.bfloat16, progress: bool = True, device: str = "cpu") -> dict:
    from tqdm import tqdm

    from .archs import ARCHS, build
    from .e2e import _median, check_device, finalize, measure, measure_tower, video_inputs

    if arch not in ARCHS or ARCHS[arch][0] not in ("llava", "qwen", "qwen3"):
        raise ValueError(f"--encoder is measured on LLaVA-OneVision, Qwen2.5-VL and Qwen3-VL shapes, got {arch!r}")
    check_device(device)
    vit = vit_s.load()
    family, vis = ARCHS[arch][0], ARCHS[arch][1]
    qwen = family != "llava"
    # ViT-S/14 at the tower's patch grid (bench's Qwen frames: 28 x 28 patches per temporal patch, e2e.video_inputs)
    px = 28 * 14 if qwen else (vis["image_size"] // vis["patch_size"]) * 14
    cache: dict = {}
    fid = [dict(clip_fidelity(vit, c, frames, cfg, px, retention, cache, pairs=qwen), cfg=cfg)
           for cfg in cfgs for c in tqdm(clips, desc=f"ViT-S patterns {_name(cfg)}", disable=not progress)]
    del vit
    model, family = build(arch, dtype)
    model = model.to(device)
    rows = []
    with torch.inference_mode():
        tower = dict(measure_tower(model, family, frames, repeats, dtype), frames=frames)
        for m, r in tqdm([("none", 1.0), ("tango", retention)], desc=f"bench {arch}", disable=not progress):
            rows.append(dict(measure(model, family, tower, m, r, repeats, 0), label=m))
        finalize(rows)
        base = video_inputs(model, family, frames, dtype)
        tango = rows[1]

        def timed_encode(h) -> tuple[float, float]:
            """(tower s, saliency s) of one encode through the adapter, the stage's own path."""
            runs: list[dict] = []
            try:
                total, _ = _median(lambda: h.encode(dict(base), runs.append({}) or runs[-1]), repeats)
            finally:
                h.remove()
            sal = statistics.median(c.get("saliency_s", 0.0) for c in runs[1:] or runs)
            return total - sal, sal

        # the control: Tango's tower timed by the same path, before and after every stage row (tower timings of
        # one process drift by more than the stage's gain: measured 10.3 s before the stage rows, 13.1 s after);
        # each stage row is compared with the mean of the two controls around it
        from ..models import apply

        control = [timed_encode(apply(model, "none", 1.0))]
        for f in tqdm(fid, desc="stage", disable=not progress):
            h = (QwenPatternHandle if qwen else PatternHandle)(model, f["pattern"].to(device), f["cfg"])
            vision, sal = timed_encode(h)
            control.append(timed_encode(apply(model, "none", 1.0)))
            row = {k: v for k, v in tango.items() if k not in ("speedup", "limit_speedup")}
            row.update(label=f"+{_name(f['cfg'])} {f['clip'][:10]}", vision_s=vision, saliency_s=sal,
                       control_vision_s=(control[-2][0] + control[-1][0]) / 2,
                       encoder=vars(f["cfg"]), **{k: v for k, v in f.items() if k not in ("pattern", "cfg")})
            rows.append(row)
        row = {k: v for k, v in tango.items() if k not in ("speedup", "limit_speedup")}
        row.update(label="tango, tower re-timed", vision_s=statistics.mean(c[0] for c in control),
                   saliency_s=statistics.mean(c[1] for c in control), control=[list(c) for c in control])
        rows.insert(2, row)
        for row in rows[2:]:
            row["ttft_s"] = row["vision_s"] + row["saliency_s"] + row["prune_s"] + row["prefill_s"]
        tango = rows[2]
    stock_ttft = rows[0]["ttft_s"]
    for row in rows:  # vs_tango: against Tango with its tower timed by the same path, around this row
        row["vs_stock"] = stock_ttft / row["ttft_s"]
        base = tango["ttft_s"] if "control_vision_s" not in row else tango["ttft_s"] - tango["vision_s"] + row["control_vision_s"]
        row["vs_tango"] = base / row["ttft_s"]
        row.update(arch=arch, frames=frames, dtype=str(dtype).replace("torch.", ""), device=device)
    return {"arch": arch, "frames": frames, "encoders": [vars(c) for c in cfgs], "retention": retention, "rows": rows}


def _name(cfg: reuse.ReuseConfig) -> str:
    return f"t{cfg.tau:g}/g{cfg.gate_layer}/k{cfg.key_share:g}/h{cfg.halo}"


def format_table(result: dict) -> str:
    head = (f"{'':<28}{'computed':>9}{'keys':>5}{'cos med':>8}{'cos p5':>8}{'jacc':>6}{'vision s':>9}{'salien s':>9}"
            f"{'prefill s':>10}{'TTFT s':>8}{'vs stock':>9}{'vs tango':>9}")
    lines = [f"{result['arch']}, {result['frames']} frames, {result['rows'][0]['dtype']}, Tango at {result['retention']:g}; "
             "+tau/gate_layer/key_share clip: Tango + the encoder stage",
             head, "-" * len(head)]
    for r in result["rows"]:
        fid = (f"{r['computed']:>9.2f}{r['key_frames']:>5}{r['cos_median']:>8.4f}{r['cos_p5']:>8.4f}{r['jaccard']:>6.2f}"
               if "computed" in r else f"{'-':>9}{'-':>5}{'-':>8}{'-':>8}{'-':>6}")
        lines.append(f"{r['label']:<28}{fid}{r['vision_s']:>9.2f}{r['saliency_s']:>9.2f}{r['prefill_s']:>10.2f}"
                     f"{r['ttft_s']:>8.2f}{r['vs_stock']:>8.2f}x{r['vs_tango']:>8.2f}x")
    lines.append("computed: share of patch tokens that ran the blocks after the gate, measured on the real ViT-S at the "
                 "tower's patch grid (random weights carry no redundancy); cos: stage vs stock final features per token "
                 "(ViT-S); jacc: Tango's kept set with vs without the stage (ViT-S tokens)")
    return "\n".join(lines)
