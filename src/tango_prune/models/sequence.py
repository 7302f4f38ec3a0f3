"""Rebuilding a batch of token sequences after each video's placeholder run got shorter (pure tensor functions)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Compacted:
    input_ids: Tensor       # (B, S') the sequences with each video's run cut to its kept length
    attention_mask: Tensor  # (B, S')
    source: Tensor          # (B, S') original position of each new position, -1 on padding
    keep: Tensor            # (B, S) bool: original positions that survive
    left_padded: bool


def compact_video_runs(
    input_ids: Tensor,
    attention_mask: Tensor | None,
    video_token_id: int,
    full_lengths: list[int],
    kept_lengths: list[int],
    pad_id: int,
) -> Compacted:
    """Shorten every video's placeholder run from ``full_lengths[v]`` to ``kept_lengths[v]`` tokens.

    Videos are matched to placeholder runs in order (row by row, left to right), as the stock classes scatter
    them. Placeholders are identical, so keeping a run's first ``kept`` positions is exact. Rows are re-padded on
    the side the input was padded on (left when any row starts with padding).
    """
    B, S = input_ids.shape
    dev = input_ids.device
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    is_video = (input_ids == video_token_id) & mask
    total = int(is_video.sum())
    if total != sum(full_lengths):
        raise ValueError(
            f"input_ids hold {total} video placeholders but the videos need {sum(full_lengths)}; "
            "build input_ids with the model's own processor for the same frames"
        )
    # rank of each placeholder within its own video, in reading order
    order = torch.cumsum(is_video.flatten().long(), 0).view(B, S) - 1  # global placeholder number
    starts = torch.tensor([0] + full_lengths[:-1], device=dev).cumsum(0)
    video_of = torch.bucketize(order.clamp(min=0), starts, right=True) - 1
    rank = order - starts[video_of]
    kept = torch.tensor(kept_lengths, device=dev)[video_of]
    keep = mask & (~is_video | (rank < kept))
    lengths = keep.sum(dim=1)
    S2 = int(lengths.max())
    left = bool(attention_mask is not None and (~mask[:, 0]).any())
    pos = torch.arange(S2, device=dev).expand(B, S2)
    valid = pos >= (S2 - lengths[:, None]) if left else pos < lengths[:, None]
    ids = torch.full((B, S2), pad_id, dtype=input_ids.dtype, device=dev)
    src = torch.full((B, S2), -1, dtype=torch.long, device=dev)
    ids[valid] = input_ids[keep]
    src[valid] = torch.arange(S, device=dev).expand(B, S)[keep]
    am = valid.to(attention_mask.dtype if attention_mask is not None else torch.long)
    return Compacted(ids, am, src, keep, left)


def expand_to_original(values: Tensor, c: Compacted) -> Tensor:
    """Put per-position values (B, S', ...) of the compacted batch back at the original positions (B, S, ...).

    A position that was cut (a pruned video placeholder) gets the value of the last surviving position before it
    (or the first one after it at the start), so causal readers such as log-likelihood slices stay well-formed.
    """
    B, S = c.keep.shape
    out = values.new_zeros((B, S, *values.shape[2:]))
    rows = torch.arange(B, device=values.device)[:, None].expand_as(c.source)
    ok = c.source >= 0
    out[rows[ok], c.source[ok]] = values[ok]
    # forward-fill: index of the last kept position at or before each position
    idx = torch.where(c.keep, torch.arange(S, device=values.device).expand(B, S), torch.full_like(c.source[:, :1], -1).expand(B, S))
    last = torch.cummax(idx, dim=1).values
    first = torch.where(c.keep.any(dim=1), c.keep.float().argmax(dim=1), torch.zeros(B, dtype=torch.long, device=values.device))
    last = torch.where(last < 0, first[:, None], last)
    return out[torch.arange(B, device=values.device)[:, None], last]


def kept_sources(c: Compacted, video_token_id: int, kept_index: list[Tensor], full_lengths: list[int],
                 trailing: bool) -> Tensor:
    """(B, S') the original position each compacted position stands for. Text: its own. The j-th surviving
    placeholder of video v's run stands for kept token j, so it maps to the run's start plus ``kept_index[v][j]``;
    with ``trailing`` each run also keeps one last placeholder (LLaVA-OV's newline) that maps to the run's last
    position. Padding maps to 0 (mask it with ``c.source >= 0``)."""
    dev = c.source.device
    # per surviving placeholder, in reading order: how far its token sits past its own rank in the run
    shift = torch.cat([torch.cat([k.to(dev).long()] + ([torch.tensor([n - 1], device=dev)] if trailing else []))
                       - torch.arange(len(k) + int(trailing), device=dev)
                       for k, n in zip(kept_index, full_lengths)])
    is_video = (c.source >= 0) & (c.input_ids == video_token_id)
    if int(is_video.sum()) != shift.numel():
        raise ValueError(f"{int(is_video.sum())} video placeholders survive but the kept tokens need {shift.numel()}")
    src = c.source.clamp_min(0).clone()
    src[is_video] += shift
    return src


def original_positions(c: Compacted, full_pos: Tensor, video_token_id: int, kept_index: list[Tensor],
                       full_lengths: list[int]) -> Tensor:
    """(B, S') the 1-D position each compacted position had in the full sequence (LLaVA-OV: a run ends with the
    newline, which gets the run's last position). ``full_pos`` (B, S) are the positions the stock call would give
    the full sequence; padding gets 0."""
    pos = full_pos.gather(1, kept_sources(c, video_token_id, kept_index, full_lengths, trailing=True))
    return torch.where(c.source >= 0, pos, torch.zeros_like(pos))
