"""Questions to a local Hugging Face checkpoint without its stock video processor (which needs torchvision):
our own resize, normalisation, Qwen patch layout and placeholder expansion, and the checkpoint's own tokenizer
and chat template.

Families: LLaVA-OneVision / LLaVA-Video (``LlavaOnevisionForConditionalGeneration``), Qwen2/2.5-VL and Qwen3-VL
(whose prompt gives each temporal patch a text timestamp and its own placeholder run, as its processor does).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor

from ..video import resize_uint8

SIGLIP = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


POSITIONS_KEY = "tango_prune_positions"  # config.json entry: how a checkpoint asks to be pruned (the exported testbed)


def checkpoint_positions(config) -> str | None:
    """The positions ("compact" or "original") a checkpoint's config (or its config.json as a dict) asks to be
    pruned with, or None: read by the CLI and the lmms-eval plugin, written by ``testbed.model.export``."""
    value = config.get(POSITIONS_KEY) if isinstance(config, dict) else getattr(config, POSITIONS_KEY, None)
    return value if value in ("compact", "original") else None


def _stats(path: Path, default):
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        f = path / name
        if f.is_file():
            cfg = json.loads(f.read_text())
            if "image_mean" in cfg and "image_std" in cfg:
                return tuple(cfg["image_mean"]), tuple(cfg["image_std"])
    return default


def _normalise(frames: Tensor, mean, std) -> Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, H, W) float."""
    x = frames.permute(0, 3, 1, 2).float().div(255)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def qwen_patches(x: Tensor, patch: int, merge: int, temporal: int) -> tuple[Tensor, Tensor]:
    """(T, 3, H, W) normalised frames -> (t*h*w, 3*temporal*patch^2) patch rows in Qwen2-VL's order (2x2 merge
    windows contiguous) and grid_thw (1, 3). Frames are repeated at the end to fill the last temporal patch."""
    T, C, H, W = x.shape
    if T % temporal:
        x = torch.cat([x, x[-1:].expand(temporal - T % temporal, -1, -1, -1)])
    gt, gh, gw = x.shape[0] // temporal, H // patch, W // patch
    x = x.reshape(gt, temporal, C, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, C * temporal * patch * patch), torch.tensor([[gt, gh, gw]])


class CheckpointPrompter:
    """Builds a model's inputs for (frames, timestamps, text) and reads an A-D choice off its logits."""

    def __init__(self, model, path: str | Path) -> None:
        from transformers import AutoTokenizer

        self.model, self.path = model, Path(path)
        self.tok = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.qwen = "Qwen" in type(model).__name__
        self.qwen3 = type(model).__name__.startswith("Qwen3")
        self.mean, self.std = _stats(self.path, CLIP if self.qwen else SIGLIP)
        self.dtype = next(model.parameters()).dtype
        letters = [self.tok.encode(x, add_special_tokens=False) for x in "ABCD"]
        self.letters = torch.tensor([ids[-1] for ids in letters])

    def _marker(self) -> str:
        cfg = self.model.config
        video = self.tok.convert_ids_to_tokens(int(cfg.video_token_id))
        if self.qwen:
            start = self.tok.convert_ids_to_tokens(int(cfg.vision_start_token_id))
            end = self.tok.convert_ids_to_tokens(int(cfg.vision_end_token_id))
            return start + video + end
        return video

    def text_ids(self, text: str) -> Tensor:
        content = self._marker() + text
        if self.tok.chat_template:
            ids = self.tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                               tokenize=True, return_dict=False)
            ids = ids["input_ids"] if isinstance(ids, dict) else ids
        else:
            ids = self.tok(content, add_special_tokens=True)["input_ids"]
        return torch.tensor(ids).reshape(-1)

    def inputs(self, frames: Tensor, timestamps: Tensor | None, text: str, height: int | None = None) -> dict:
        cfg, vid = self.model.config, int(self.model.config.video_token_id)
        ids = self.text_ids(text)
        if int((ids == vid).sum()) != 1:
            raise ValueError(f"{self.path}'s chat template did not keep the video marker once; cannot place the video")
        if self.qwen:
            v = cfg.vision_config
            unit = v.patch_size * v.spatial_merge_size
            h = max(unit, round((height or min(frames.shape[1], 448)) / unit) * unit)
            w = max(unit, round(frames.shape[2] * h / frames.shape[1] / unit) * unit)
            x = _normalise(resize_uint8(frames, h, w), self.mean, self.std)
            pv, thw = qwen_patches(x, v.patch_size, v.spatial_merge_size, v.temporal_patch_size)
            n = int(thw.prod()) // v.spatial_merge_size**2
            spt = v.temporal_patch_size * (float(timestamps[1] - timestamps[0]) if timestamps is not None and len(timestamps) > 1 else 1.0)
            extra = {"pixel_values_videos": pv.to(self.dtype), "video_grid_thw": thw}
            if not self.qwen3:  # Qwen3-VL reads time off the text timestamps
                extra["second_per_grid_ts"] = torch.tensor([spt])
        else:
            side = cfg.vision_config.image_size
            x = _normalise(resize_uint8(frames, side, side), self.mean, self.std)
            n = frames.shape[0] * math.ceil(side // cfg.vision_config.patch_size / 2) ** 2 + 1
            extra = {"pixel_values_videos": x.unsqueeze(0).to(self.dtype)}
        at = int((ids == vid).nonzero()[0, 0])
        if self.qwen3:  # "<1.0 seconds><|vision_start|>" + one temporal patch's placeholders + "<|vision_end|>", each
            if not (0 < at < len(ids) - 1 and ids[at - 1] == cfg.vision_start_token_id and ids[at + 1] == cfg.vision_end_token_id):
                raise ValueError(f"{self.path}'s chat template did not keep <|vision_start|><|video_pad|><|vision_end|>")
            t = int(thw[0, 0])
            k = cfg.vision_config.temporal_patch_size
            ts = timestamps.float() if timestamps is not None else torch.arange(frames.shape[0], dtype=torch.float32)
            ts = torch.cat([ts, ts[-1:].expand((-len(ts)) % k)]).reshape(-1, k)
            runs = [torch.tensor(self.tok.encode(f"<{float(a + b) / 2:.1f} seconds>", add_special_tokens=False)
                                 + [int(cfg.vision_start_token_id)] + [vid] * (n // t) + [int(cfg.vision_end_token_id)])
                    for a, b in zip(ts[:, 0].tolist(), ts[:, -1].tolist())]
            ids = torch.cat([ids[: at - 1], *runs, ids[at + 2 :]]).unsqueeze(0)  # the marker was start, video, end
        else:
            ids = torch.cat([ids[:at], torch.full((n,), vid), ids[at + 1 :]]).unsqueeze(0)
        out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **extra}
        if self.qwen:
            out["mm_token_type_ids"] = (ids == vid).int() * 2
        if timestamps is not None:
            ts = timestamps.float()
            if self.qwen:  # one time per temporal patch: the mean of its frames (the last frame repeats to fill it)
                k = cfg.vision_config.temporal_patch_size
                ts = torch.cat([ts, ts[-1:].expand((-len(ts)) % k)]).reshape(-1, k).mean(1)
            out["video_timestamps"] = [ts]
        return out

    def choice(self, logits: Tensor) -> int:
        return int(logits[..., -1, :].reshape(-1, logits.shape[-1])[0, self.letters].float().argmax())
