"""The optional stage inside the LLM (SPEC, "inside the LLM"): after ``layer`` decoder layers have seen every
video token, rank them by the last prompt token's attention in the layer before, keep a share, merge each other
video token into its most similar kept one, and let the later layers run on the shorter sequence with the kept
tokens' original positions.

It runs as forward pre-hooks on this one model's decoder layers (removed with the handle): no transformers code
is edited and the state dict keeps its keys. The per-call state (``StageCall``) is created by the handle for one
``forward`` or ``generate`` call and dropped when that call returns.

Layer numbering: ``layer=K`` means layers 0..K-1 (0-based) see all tokens; the scores come from layer K-1's
attention (its input, its own q/k and rotary embedding, for the last prompt token only), and layers K.. see the
kept ones. The last layer's output is scattered back to the full length (dropped rows are zeros), so logits keep
one row per input position.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class LLMStage:
    """layer: decoder layers that see every video token (the release: 18 for LLaVA-Video, 28 layers);
    keep: share of the video tokens kept after it; blend: weight of the kept token against the pooled mean of
    what merges into it; rescale: raise the pre-LLM retention so the mean share over all layers is the target."""

    layer: int = 18
    keep: float = 0.5
    blend: float = 0.6
    rescale: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.layer, int) and self.layer >= 1):
            raise ValueError(f"llm_stage layer must be an integer >= 1, got {self.layer!r}")
        if not 0 < self.keep <= 1:
            raise ValueError(f"llm_stage keep must be in (0, 1], got {self.keep!r}")
        if not 0 <= self.blend <= 1:
            raise ValueError(f"llm_stage blend must be in [0, 1], got {self.blend!r}")

    def pre_llm_retention(self, retention: float, num_layers: int) -> float:
        """The release's r_pre = L r / (K + (L - K) keep): the token share averaged over the L layers is r."""
        if not self.rescale:
            return retention
        return min(1.0, num_layers * retention / (self.layer + (num_layers - self.layer) * self.keep))


PRESETS = {"llava-video": LLMStage(layer=18, keep=0.5, blend=0.6)}


def resolve(spec) -> LLMStage | None:
    if spec is None or isinstance(spec, LLMStage):
        return spec
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f"llm_stage must be an LLMStage, a dict of its fields or one of {sorted(PRESETS)}; got {spec!r}")
        return PRESETS[spec]
    if isinstance(spec, dict):
        return LLMStage(**spec)
    raise ValueError(f"llm_stage must be an LLMStage, a dict of its fields or one of {sorted(PRESETS)}; got {spec!r}")


def _rotate_half(x: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def _take(x: Tensor, idx: Tensor, dim: int, batch_dim: int | None = None) -> Tensor:
    """Per batch row, the entries ``idx`` (B, n) along ``dim`` of ``x``. The batch dim is ``batch_dim``, by default
    the one before ``dim`` (cos/sin (..., B, N, d), position ids (..., B, N)); masks pass 0. Broadcast batch dims
    of size 1 are expanded."""
    dim = dim % x.dim()
    batch_dim = dim - 1 if batch_dim is None else batch_dim
    shape = list(x.shape)
    shape[batch_dim] = idx.shape[0]
    x = x.expand(shape)
    view = [1] * x.dim()
    view[batch_dim], view[dim] = idx.shape[0], idx.shape[1]
    shape[dim] = idx.shape[1]
    return x.gather(dim, idx.view(view).expand(shape))


def _with_hidden(args: tuple, kwargs: dict, h: Tensor) -> tuple[tuple, dict]:
    """The layer's call with ``h`` as its hidden states, however the loop passed them."""
    return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})


class StageCall:
    """What one call needs between layers: video positions, then the scores, then the kept rows."""

    def __init__(self, video: Tensor, attention_mask: Tensor | None) -> None:
        self.video = video                  # (B, N) bool, the compacted sequence's video positions
        self.valid = attention_mask.bool() if attention_mask is not None else torch.ones_like(video)
        self.N = video.shape[1]
        self.scores: Tensor | None = None   # (B, N)
        self.keep: Tensor | None = None     # (B, Nk) sorted positions of the rows later layers see


class StageHooks:
    def __init__(self, layers, stage: LLMStage, get_call) -> None:
        if stage.layer >= len(layers):
            raise ValueError(f"llm_stage layer must be below the model's {len(layers)} decoder layers, got {stage.layer}")
        self.stage, self.get_call = stage, get_call
        K = stage.layer
        self.handles = [layers[K - 1].register_forward_pre_hook(self._score, with_kwargs=True)]
        for i in range(K, len(layers)):
            self.handles.append(layers[i].register_forward_pre_hook(
                self._prune if i == K else self._narrow, with_kwargs=True))
        self.handles.append(layers[-1].register_forward_hook(self._widen))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    @staticmethod
    def _hidden(args, kwargs) -> Tensor:
        return args[0] if args else kwargs["hidden_states"]

    def _prefill(self, call: StageCall | None, hidden: Tensor) -> bool:
        return call is not None and hidden.shape[1] == call.N

    # -- layer K-1: scores ------------------------------------------------------------------------------------
    @torch.no_grad()
    def _score(self, layer, args, kwargs):
        call, h = self.get_call(), self._hidden(args, kwargs)
        if not self._prefill(call, h) or call.scores is not None:
            return None
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        hd = attn.head_dim
        q = attn.q_proj(x[:, -1:]).view(h.shape[0], 1, -1, hd).transpose(1, 2)   # (B, H, 1, hd)
        k = attn.k_proj(x).view(h.shape[0], h.shape[1], -1, hd).transpose(1, 2)  # (B, Hkv, N, hd)
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        cos, sin = kwargs["position_embeddings"]
        cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)  # (B, 1, N, hd)
        q = q * cos[..., -1:, :] + _rotate_half(q) * sin[..., -1:, :]
        k = k * cos + _rotate_half(k) * sin
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        logits = (q.float() @ k.float().transpose(-1, -2)).squeeze(-2) * hd ** -0.5  # (B, H, N)
        logits = logits.masked_fill(~call.valid[:, None], float("-inf"))
        call.scores = logits.softmax(-1).mean(1)
        return None

    # -- layer K: choose, merge, shorten ---------------------------------------------------------------------
    @torch.no_grad()
    def _prune(self, layer, args, kwargs):
        call, h = self.get_call(), self._hidden(args, kwargs)
        if not self._prefill(call, h):
            return self._narrow(layer, args, kwargs)
        B = h.shape[0]
        n_video = call.video.sum(1)
        n_drop = (n_video.float() * (1 - self.stage.keep)).round().long()
        # rows must stay equal in length: a row dropping fewer video tokens drops as many padding positions more
        extra = n_drop.max() - n_drop
        pads = (~call.valid).sum(1)
        if bool((extra > pads).any()):
            raise ValueError("llm_stage: videos of different token counts in one batch need enough left padding; "
                             "run them one at a time")
        score = call.scores.masked_fill(~call.video, float("inf"))
        rank = score.argsort(dim=1).argsort(dim=1)  # 0 = the lowest-attention video token of the row
        pad_rank = torch.cumsum(~call.valid, dim=1)  # padding positions, first ones first
        drop = (call.video & (rank < n_drop[:, None])) | (~call.valid & (pad_rank <= extra[:, None]))
        call.keep = (~drop).nonzero()[:, 1].view(B, -1)  # sorted per row
        h = self._merge(h, drop & call.video, call.video & ~drop)
        return self._narrow(layer, *_with_hidden(args, kwargs, h), shorten_hidden=True)

    def _merge(self, h: Tensor, dropped: Tensor, kept: Tensor) -> Tensor:
        """Each dropped video token joins its most cosine-similar kept video token of the same row:
        kept' = blend * kept + (1 - blend) * (kept + sum of joined) / (1 + count)."""
        out = h.clone()
        for b in range(h.shape[0]):  # rows of a batch, not tokens
            src, dst = dropped[b].nonzero()[:, 0], kept[b].nonzero()[:, 0]
            if len(src) == 0 or len(dst) == 0:
                continue
            a, k = F.normalize(h[b, src].float(), dim=-1), F.normalize(h[b, dst].float(), dim=-1)
            target = (a @ k.T).argmax(1)
            total = h[b, dst].float().index_add(0, target, h[b, src].float())
            count = torch.ones(len(dst), device=h.device).index_add(0, target, torch.ones(len(src), device=h.device))
            pooled = total / count[:, None]
            out[b, dst] = (self.stage.blend * h[b, dst].float() + (1 - self.stage.blend) * pooled).to(h.dtype)
        return out

    # -- layers K..: narrow what the loop passes to the kept rows ----------------------------------------------
    def _narrow(self, layer, args, kwargs, shorten_hidden: bool = False):
        call = self.get_call()
        if call is None or call.keep is None:
            return None
        h = self._hidden(args, kwargs)
        keep, kw = call.keep, dict(kwargs)
        pe = kw.get("position_embeddings")
        # in prefill the loop still passes full-length positions and masks; in decoding only the new rows
        prefill = shorten_hidden or (pe is not None and pe[0].shape[-2] == call.N and h.shape[1] != call.N)
        if shorten_hidden:
            args, kw = _with_hidden(args, kw, _take(h, keep, 1))
        mask = kw.get("attention_mask")
        if prefill:
            if isinstance(kw.get("position_ids"), Tensor):
                kw["position_ids"] = _take(kw["position_ids"], keep, -1)
            if pe is not None:
                kw["position_embeddings"] = tuple(_take(t, keep, -2) for t in pe)
            if isinstance(mask, Tensor) and mask.dim() == 4:
                mask = _take(mask, keep, 2, batch_dim=0) if mask.shape[2] > 1 else mask
                kw["attention_mask"] = _take(mask, keep, 3, batch_dim=0)
            elif isinstance(mask, Tensor) and mask.dim() == 2:
                kw["attention_mask"] = _take(mask, keep, 1, batch_dim=0)
        elif isinstance(mask, Tensor) and mask.dim() in (2, 4):
            # decoding: new rows attend to the kept rows and to every row generated since
            later = torch.arange(call.N, mask.shape[-1], device=keep.device).expand(keep.shape[0], -1)
            kw["attention_mask"] = _take(mask, torch.cat([keep, later], dim=1), -1, batch_dim=0)
        return args, kw

    # -- last layer: back to full length ---------------------------------------------------------------------
    def _widen(self, layer, args, output):
        call = self.get_call()
        h = output[0] if isinstance(output, tuple) else output
        if call is None or call.keep is None or call.keep.shape[1] == call.N or h.shape[1] != call.keep.shape[1]:
            return None
        full = h.new_zeros(h.shape[0], call.N, h.shape[2])
        full.scatter_(1, call.keep[..., None].expand(-1, -1, h.shape[2]), h)
        return (full,) + tuple(output[1:]) if isinstance(output, tuple) else full
