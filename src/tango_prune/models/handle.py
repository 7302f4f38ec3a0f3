"""The handle ``apply`` returns: it wraps one model instance's ``forward`` and ``generate`` and gives them back.

Nothing of transformers is edited: the stock methods stay on the class; the handle puts two bound callables on
the instance (shadowing the class's) and ``remove()`` deletes them. Per-request data lives in local variables
of one call; ``last_stats`` keeps only counts and times of the most recent call, for reporting.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..methods import get_method
from ..types import Pruned, VideoTokens
from . import llm_stage as llm_stage_mod
from .sequence import Compacted, compact_video_runs, expand_to_original

_ATTR = "_tango_prune_handle"


@dataclass(frozen=True)
class VideoShape:
    """A video encoded and pruned chunk by chunk (``chunk_frames``): its grid only, the features are not held."""

    grid: tuple[int, int, int]

    @property
    def num_tokens(self) -> int:
        T, H, W = self.grid
        return T * H * W


def timed(ctx: dict, key: str, fn, *args):
    """fn(*args), adding its wall time (the GPU's work included) to ctx[key]: the saliency map's own cost, which a
    difference of two whole tower runs would bury in their noise."""
    def sync():
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    sync()
    t = time.perf_counter()
    out = fn(*args)
    sync()
    ctx[key] = ctx.get(key, 0.0) + time.perf_counter() - t
    return out


class PruneHandle:
    """Base of the per-family adapters. Subclasses implement ``encode`` and ``assemble``."""

    family = "base"

    def __init__(self, model, method: str, retention: float, llm_stage=None, chunk_frames: int | None = None,
                 max_carry: int = 256, **method_opts) -> None:
        if getattr(model, _ATTR, None) is not None:
            raise ValueError("tango-prune is already applied to this model; call handle.remove() first")
        if chunk_frames is not None:
            if isinstance(chunk_frames, bool) or not isinstance(chunk_frames, int) or chunk_frames < 1:
                raise ValueError(f"chunk_frames must be a positive number of frames (or None), got {chunk_frames!r}")
            if method != "tango":
                raise ValueError(f"chunk_frames prunes chunk by chunk with Tango (stream.TangoStream); method "
                                 f"{method!r} needs the whole video: use method='tango' or chunk_frames=None")
            if method_opts.get("brief_frames"):
                raise ValueError("brief_frames is not supported with chunk_frames; set brief_frames=0 or chunk_frames=None")
            if isinstance(max_carry, bool) or not isinstance(max_carry, int) or max_carry < 1:
                raise ValueError(f"max_carry must be a positive number of frames, got {max_carry!r}")
        self.chunk_frames, self.max_carry = chunk_frames, max_carry
        self.model = model
        self.method = method
        self.target_retention = retention
        self.llm_stage = llm_stage_mod.resolve(llm_stage)
        layers = self._decoder_layers() if self.llm_stage else None
        if layers is not None:
            retention = self.llm_stage.pre_llm_retention(retention, len(layers))
        self.retention = retention  # before the LLM: raised when a stage inside it takes more away
        self.pruner = get_method(method)(retention=retention, **method_opts)
        self._call: llm_stage_mod.StageCall | None = None
        self._stage_hooks = llm_stage_mod.StageHooks(layers, self.llm_stage, lambda: self._call) if layers else None
        self.last_stats: list[dict[str, Any]] = []
        # an instance may already carry its own forward (accelerate's device hooks put one there): wrap that one,
        # and put it back on remove()
        self._saved = {n: model.__dict__[n] for n in ("forward", "generate") if n in model.__dict__}
        self._stock_forward = self._saved.get("forward") or type(model).forward.__get__(model)
        self._stock_generate = self._saved.get("generate") or type(model).generate.__get__(model)
        # stock signatures stay visible (generate validates kwargs against inspect.signature(model.forward))
        model.forward = functools.wraps(self._stock_forward)(lambda *a, **kw: self._forward(*a, **kw))
        model.generate = functools.wraps(self._stock_generate)(lambda *a, **kw: self._generate(*a, **kw))
        setattr(model, _ATTR, self)

    # -- lifecycle -----------------------------------------------------------------------------------------
    def remove(self) -> None:
        """Give the model back its stock forward and generate."""
        if self._stage_hooks is not None:
            self._stage_hooks.remove()
            self._stage_hooks = None
        d = self.model.__dict__
        for name in ("forward", "generate", _ATTR):
            d.pop(name, None)
        d.update(self._saved)

    def __enter__(self) -> PruneHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def _decoder_layers(self):
        lm = getattr(getattr(self.model, "model", None), "language_model", None)
        layers = getattr(lm, "layers", None)
        if layers is None:
            raise ValueError(f"llm_stage needs the decoder layers at model.model.language_model.layers; "
                             f"{type(self.model).__name__} has none there")
        return layers

    def _run(self, fn, kwargs: dict, c: Compacted):
        """Call the stock ``fn``; with a stage inside the LLM, its state lives exactly as long as this call."""
        if self.llm_stage is None:
            return fn(**kwargs)
        self._call = llm_stage_mod.StageCall(c.input_ids == self.video_token_id(), c.attention_mask)
        try:
            return fn(**kwargs)
        finally:
            call, self._call = self._call, None
            if call.keep is not None and len(self.last_stats) == call.keep.shape[0]:  # one video per row
                left = call.video.gather(1, call.keep).sum(1)
                for s, n in zip(self.last_stats, left.tolist()):
                    s["llm_tokens_after_stage"] = int(n)

    # -- family hooks ----------------------------------------------------------------------------------------
    def encode(self, kwargs: dict, ctx: dict) -> tuple[list[VideoTokens], list[str]]:
        """Pop the video inputs from kwargs; return each video's tokens and the saliency source used.
        ``ctx`` carries what this one call needs later (it dies with the call)."""
        raise NotImplementedError

    def assemble(self, videos: list[VideoTokens], kept: list[Pruned], kwargs: dict,
                 ctx: dict) -> tuple[dict, list[int], list[int]]:
        """The stock call's extra kwargs carrying the kept tokens, and per video (full, kept) placeholder counts."""
        raise NotImplementedError

    def positions(self, c: Compacted, input_ids: Tensor, attention_mask: Tensor | None, kept: list[Pruned],
                  kwargs: dict, ctx: dict) -> dict:
        """Extra kwargs for the compacted sequence's positions (1-D models: none, the class counts them)."""
        return {}

    def prune_one(self, vt: VideoTokens) -> Pruned:
        return self.pruner(vt)

    def encode_chunked(self, kwargs: dict, ctx: dict) -> tuple[list[VideoShape], list[Pruned], list[str]]:
        """``chunk_frames``: encode each video ``chunk_frames`` frames at a time, pruning as the chunks come
        (stream.TangoStream); only kept rows are held. Puts each video's pruning seconds in ctx["prune_s"]."""
        raise ValueError(f"chunk_frames is not supported for {type(self.model).__name__} yet")

    def prune_in_chunks(self, vt: VideoTokens) -> Pruned:
        """``video_tokens=`` given with ``chunk_frames``: the tokens go to the stream ``chunk_frames`` frames at a time
        (what the chunked tower would hand it: the tower encodes each frame alone)."""
        stream, c = self.stream(vt.grid[1:]), self.chunk_frames
        for a in range(0, vt.grid[0], c):
            n = min(c, vt.grid[0] - a)
            stream.push(VideoTokens(vt.features[a : a + n], None if vt.saliency is None else vt.saliency[a : a + n],
                                    (n, *vt.grid[1:]), None if vt.timestamps is None else vt.timestamps[a : a + n]))
        return stream.finish()

    def stream(self, hw: tuple[int, int]):
        from ..stream import TangoStream

        return TangoStream(self.pruner.config, max_carry=self.max_carry)

    def encode_given(self, videos: list[VideoTokens], kwargs: dict, ctx: dict) -> tuple[list[VideoTokens], list[str]]:
        """``video_tokens=`` from ``encode_videos``: drop the pixel inputs the stock call no longer needs."""
        for key in ("pixel_values_videos", "video_timestamps"):
            kwargs.pop(key, None)
        return list(videos), ["given"] * len(videos)

    @torch.no_grad()
    def encode_videos(self, **inputs) -> list[VideoTokens]:
        """Run the vision tower once on a call's inputs and return each video's tokens (features, saliency, grid,
        timestamps). Pass them back as ``model(..., video_tokens=...)`` (any method's handle on this model) to
        compare methods or ratios without re-encoding."""
        if inputs.get("pixel_values_videos") is None:
            raise ValueError("encode_videos needs pixel_values_videos (the processor's video output)")
        videos, _ = self.encode(dict(inputs), {})
        return videos

    def pad_id(self) -> int:
        cfg = getattr(self.model.config, "text_config", self.model.config)
        pad = getattr(cfg, "pad_token_id", None)
        return 0 if pad is None else int(pad)

    # -- the wrapped calls -----------------------------------------------------------------------------------
    def _prepare(self, kwargs: dict, generating: bool = False) -> tuple[dict, Compacted, Tensor] | None:
        if not self.has_video(kwargs):
            return None
        input_ids = kwargs.pop("input_ids", None)
        if input_ids is None:
            raise ValueError("pruning needs input_ids (the processor's output), not inputs_embeds")
        ctx: dict = {"generating": generating, "full_lengths": None}
        given = kwargs.pop("video_tokens", None)
        if self.chunk_frames and given is None:
            videos, kept, sources = self.encode_chunked(kwargs, ctx)
            seconds = ctx["prune_s"]
        else:
            videos, sources = self.encode(kwargs, ctx) if given is None else self.encode_given(given, kwargs, ctx)
            kept, seconds = [], []
            for vt in videos:
                t = time.perf_counter()
                kept.append(self.prune_in_chunks(vt) if self.chunk_frames else self.prune_one(vt))
                seconds.append(time.perf_counter() - t)
        stats = [{"tokens_full": vt.num_tokens, "tokens_kept": out.num_kept, "frames": vt.grid[0], "saliency": src,
                  "prune_s": dt, "segments": len(out.segments)}
                 for vt, out, src, dt in zip(videos, kept, sources, seconds)]
        for s, share in zip(stats, ctx.get("encoder_computed", [])):  # the encoder stage's computed share
            s["encoder_computed"] = share
        extra, full, short = self.assemble(videos, kept, kwargs, ctx)
        attention_mask = kwargs.pop("attention_mask", None)
        # a family whose video is several placeholder runs (Qwen3-VL: one per frame) sizes each run in ctx
        run_full, run_short = ctx.get("run_full", full), ctx.get("run_short", short)
        c = compact_video_runs(input_ids, attention_mask, self.video_token_id(), run_full, run_short, self.pad_id())
        ctx["full_lengths"] = run_full
        extra.update(self.positions(c, input_ids, attention_mask, kept, kwargs, ctx))  # sees the caller's kwargs
        for key in ("mm_token_type_ids", "token_type_ids"):  # per-position inputs follow the tokens they describe
            v = kwargs.get(key)
            if isinstance(v, Tensor) and v.shape == input_ids.shape:
                new = torch.zeros_like(c.input_ids, dtype=v.dtype)
                new[c.source >= 0] = v[c.keep]
                kwargs[key] = new
        labels = kwargs.pop("labels", None)
        if labels is not None:
            lab = torch.full_like(c.input_ids, -100)
            lab[c.source >= 0] = labels[c.keep]
            kwargs["labels"] = lab
        for s, k in zip(stats, short):
            s["llm_tokens"] = k
        self.last_stats = stats
        kwargs.update(extra)
        kwargs.update(input_ids=c.input_ids, attention_mask=c.attention_mask)
        return kwargs, c, input_ids

    def has_video(self, kwargs: dict) -> bool:
        return kwargs.get("pixel_values_videos") is not None or kwargs.get("video_tokens") is not None

    def video_token_id(self) -> int:
        return int(self.model.config.video_token_id)

    @staticmethod
    def _positional(args: tuple, kwargs: dict) -> None:
        if len(args) > 1:
            raise ValueError("pass model inputs as keywords (input_ids=..., pixel_values_videos=...)")
        if args:
            kwargs["input_ids"] = args[0]

    def _forward(self, *args, **kwargs):
        self._positional(args, kwargs)
        prep = self._prepare(kwargs)
        if prep is None:
            return self._stock_forward(**kwargs)
        new_kwargs, c, _ = prep
        out = self._run(self._stock_forward, new_kwargs, c)
        if getattr(out, "logits", None) is not None:
            out.logits = expand_to_original(out.logits, c)
        return out

    def _generate(self, *args, **kwargs):
        self._positional(args, kwargs)
        prep = self._prepare(kwargs, generating=True)
        if prep is None:
            return self._stock_generate(**kwargs)
        new_kwargs, c, original = prep
        out = self._run(self._stock_generate, new_kwargs, c)
        # callers slice generated tokens as out[:, input_ids.shape[1]:]: keep that contract
        seq = out if isinstance(out, Tensor) else out.sequences
        full = torch.cat([original, seq[:, c.input_ids.shape[1] :]], dim=1)
        if isinstance(out, Tensor):
            return full
        out.sequences = full
        return out


def merge_chunk_shares(ctx: dict, start: int, sizes: list[int]) -> None:
    """The encoder stage under ``chunk_frames`` logs one computed share per chunk (from ``ctx["encoder_computed"]
    [start:]``); a video's share is their mean weighted by the chunks' frames, as ``last_stats`` reports per video."""
    shares = ctx.get("encoder_computed", [])[start:]
    if not shares:
        return
    del ctx["encoder_computed"][start:]
    ctx["encoder_computed"].append(sum(a * n for a, n in zip(shares, sizes)) / sum(sizes))
