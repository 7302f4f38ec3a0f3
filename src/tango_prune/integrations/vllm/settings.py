"""What the vLLM plugin is asked to do, read from the environment, and the pruner that does it.

vLLM sizes a video's placeholder run when it processes the prompt (API-server / engine process) and prunes
the encoder's output later (worker process). Both read the same two variables and call ``kept_count``, so
the count reserved and the count kept are one function of (method, grid, retention):

    TANGO_PRUNE_METHOD   a registry name (``tango_prune.list_methods()``); unset/empty: the plugin does nothing
    TANGO_PRUNE_OPTIONS  a JSON object of that method's options, plus the adapter options ``ADAPTER_OPTIONS``
                         (``chunk_frames``: Tango only, the tower encodes a video that many frames at a time and
                         each chunk is pruned as it comes; ``max_carry``: frames of the open segment held, 256;
                         ``encoder``: the encoder stage in Qwen's towers, "reuse", "reuse:tau=0.9" or a dict of
                         ``encoders.reuse.ReuseConfig`` fields, see ``encoder_stage``)

The retention is ``1 - q`` with q = vLLM's own ``--video-pruning-rate`` (the share pruned).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Mapping

from ...core.budget import exact_count, fit_budget
from ...encoders.reuse import ReuseConfig, resolve_encoder
from ...methods import get_method, list_methods
from ...methods.common import check_retention, saliency_of
from ...stream import TangoStream
from ...types import Pruned, VideoTokens, positions_of

METHOD_VAR = "TANGO_PRUNE_METHOD"
OPTIONS_VAR = "TANGO_PRUNE_OPTIONS"

# Options the model adapters read (where the saliency comes from); everything else goes to the method.
ADAPTER_OPTIONS = {
    "saliency": ("auto", "global-query", "features", "map-head", "cls", "attention"),
    "siglip_head": None,  # a local SigLIP checkpoint dir (LLaVA-OV); any string
    "chunk_frames": int,  # encode and prune each video this many frames at a time (stream.TangoStream); Tango only
    "max_carry": int,  # with chunk_frames: the most frames of the still-open segment held across chunks
    "encoder": "stage",  # the encoder stage (encoder_stage.py): "reuse", "reuse:tau=0.9" or a dict of its fields
    # benchmarks only: a torch file of a (temporal patches, patches) bool raster pattern that replaces the stage's
    # gate (random weights carry no redundancy; bench/encoder.py measures the pattern on a real ViT)
    "encoder_pattern": None,
}
# Keys the plugin sets itself: the retention comes from --video-pruning-rate, the budget must be exact.
_RESERVED = ("retention",)


@dataclass(frozen=True)
class Settings:
    method: str
    options: dict

    @property
    def method_options(self) -> dict:
        """The options the method takes (adapter options removed; Tango forced to the exact budget)."""
        opts = {k: v for k, v in self.options.items() if k not in ADAPTER_OPTIONS}
        if self.method == "tango":
            opts["budget"] = "exact"
        return opts

    @property
    def adapter_options(self) -> dict:
        return {k: v for k, v in self.options.items() if k in ADAPTER_OPTIONS}

    @property
    def chunk_frames(self) -> int | None:
        """Frames per tower call when encoding chunk by chunk (None: the whole video in one call)."""
        return self.options.get("chunk_frames")

    @property
    def encoder(self) -> ReuseConfig | None:
        """The encoder stage's settings (None: the stock tower)."""
        return resolve_encoder(self.options.get("encoder"))

    def make_stream(self, retention: float) -> TangoStream:
        """A fresh ``stream.TangoStream`` for one video (``chunk_frames`` set): the method's own config, the exact
        budget, so a video keeps ``kept_count`` tokens in total."""
        cfg = get_method("tango")(retention=check_retention(retention), **self.method_options).config
        return TangoStream(cfg, max_carry=self.options.get("max_carry", 256))

    def describe(self) -> str:
        return f"method={self.method} options={json.dumps(self.options, sort_keys=True)}"


def _fail(msg: str) -> ValueError:
    return ValueError(" ".join(msg.split()))  # one line, whatever the wrapped message held


def read_settings(environ: Mapping[str, str] = os.environ) -> Settings | None:
    """The plugin's settings, or None when ``TANGO_PRUNE_METHOD`` is unset or empty (plugin off).

    Raises a one-line ValueError naming the variable and the fix on an unknown method, options that are not a
    JSON object, or options the method rejects, so that vLLM's start-up stops before any model loads.
    """
    method = (environ.get(METHOD_VAR) or "").strip()
    if not method:
        return None
    if method not in list_methods():
        raise _fail(f"{METHOD_VAR}={method!r} is not a tango-prune method; set it to one of {', '.join(list_methods())} "
                    f"(or unset it to leave vLLM's pruning as it is)")
    raw = (environ.get(OPTIONS_VAR) or "").strip() or "{}"
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as e:
        raise _fail(f"{OPTIONS_VAR} is not valid JSON ({e.msg} at char {e.pos}); "
                    f"set it to a JSON object such as '{{\"context_ratio\": 0.4}}' or unset it") from None
    if not isinstance(options, dict):
        raise _fail(f"{OPTIONS_VAR} must be a JSON object of {method} options, got {type(options).__name__} {raw!r}")
    for key in _RESERVED:
        if key in options:
            raise _fail(f"{OPTIONS_VAR} must not set {key!r}: the share kept is 1 - vLLM's --video-pruning-rate")
    if method == "tango" and options.get("budget", "exact") != "exact":
        raise _fail(f"{OPTIONS_VAR} sets budget={options['budget']!r}, but vLLM reserves the placeholders before "
                    f"pruning, so the plugin needs budget='exact'; drop 'budget' from {OPTIONS_VAR}")
    for key, choices in ADAPTER_OPTIONS.items():
        if key not in options:
            continue
        value = options[key]
        if choices == "stage":
            try:
                resolve_encoder(value)
            except ValueError as e:
                raise _fail(f"{OPTIONS_VAR} option encoder={value!r} is invalid: {e}") from None
            continue
        if choices is int:
            ok, want = isinstance(value, int) and not isinstance(value, bool) and value >= 1, "a whole number >= 1"
        else:
            ok = isinstance(value, str) and (choices is None or value in choices)
            want = f"one of {', '.join(choices)}" if choices else "a string"
        if not ok:
            raise _fail(f"{OPTIONS_VAR} option {key}={value!r} is invalid; use {want}")
    if "chunk_frames" in options and method != "tango":
        raise _fail(f"{OPTIONS_VAR} sets chunk_frames, which prunes chunk by chunk with Tango; method {method!r} needs "
                    f"the whole video: drop chunk_frames or set {METHOD_VAR}=tango")
    if "max_carry" in options and "chunk_frames" not in options:
        raise _fail(f"{OPTIONS_VAR} sets max_carry without chunk_frames; add chunk_frames or drop max_carry")
    if "chunk_frames" in options and options.get("brief_frames"):
        raise _fail(f"{OPTIONS_VAR}: brief_frames is not supported with chunk_frames; drop one of them")
    if "encoder_pattern" in options and "chunk_frames" in options:  # a whole video's raster; chunks are parts of it
        raise _fail(f"{OPTIONS_VAR} sets encoder_pattern and chunk_frames (the pattern is the whole video's); drop "
                    f"one of them")
    if "encoder_pattern" in options and "encoder" not in options:
        raise _fail(f"{OPTIONS_VAR} sets encoder_pattern without encoder; add encoder or drop encoder_pattern")
    settings = Settings(method, options)
    try:  # let the method judge its own options now, in the process that starts vLLM
        get_method(method)(retention=0.5, **settings.method_options)
    except (TypeError, ValueError) as e:
        raise _fail(f"{OPTIONS_VAR}={raw} is rejected by method {method!r}: {e}; fix or unset {OPTIONS_VAR}") from None
    return settings


def kept_count(settings: Settings, tokens_per_frame: int, num_frames: int, retention: float) -> int:
    """Tokens a video of ``num_frames`` x ``tokens_per_frame`` keeps: max(1, round(retention * T * L)), with no
    one-frame floor (vLLM's EVS keeps at least a whole frame; we keep what the method's budget says).
    ``none`` keeps every token whatever the rate (it is the unpruned baseline)."""
    total = int(tokens_per_frame) * int(num_frames)
    if settings.method == "none":
        return total
    return exact_count(check_retention(retention), total)


def _fit(vt: VideoTokens, out: Pruned, target: int) -> Pruned:
    """``out`` with exactly ``target`` tokens (core.budget.fit_budget: the surplus goes by saliency, unmerged
    first; a deficit is filled with the most salient tokens not kept)."""
    T, L, D = vt.features.shape
    score = saliency_of(vt)[0].flatten()
    index, feats, merged, owner = fit_budget(out.index, out.features, out.merged, out.assignment,
                                             vt.features.reshape(T * L, D), score, target)
    info = dict(out.info, budget_fit={"method_kept": out.num_kept, "kept": target})
    return Pruned(index, feats, positions_of(index, vt.grid), out.segments, merged, owner, vt.grid, info)


def make_pruner(settings: Settings, retention: float) -> Callable[[VideoTokens], Pruned]:
    """A callable VideoTokens -> Pruned keeping exactly ``kept_count(settings, L, T, retention)`` tokens."""
    retention = check_retention(retention)
    base = get_method(settings.method)(retention=1.0 if settings.method == "none" else retention,
                                       **settings.method_options)

    def prune(vt: VideoTokens) -> Pruned:
        T, L, _ = vt.features.shape
        target = kept_count(settings, L, T, retention)
        out = base(vt)
        return out if out.num_kept == target else _fit(vt, out, target)

    prune.name = settings.method  # type: ignore[attr-defined]
    prune.settings = settings  # type: ignore[attr-defined]
    return prune


__all__ = ["ADAPTER_OPTIONS", "METHOD_VAR", "OPTIONS_VAR", "Settings", "kept_count", "make_pruner", "read_settings"]
