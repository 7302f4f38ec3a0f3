"""M-RoPE positions of a pruned Qwen3-family prompt, placed prefill chunk by prefill chunk, the same however the
scheduler cuts the prompt.

Why not vLLM's own (``vllm.multimodal.video_prune.evs.recompute_mrope_positions``, vLLM 0.32): it finds where a chunk
resumes inside a video by counting video placeholders in the *prompt*. A pruned Qwen3 prompt holds all of a video's
placeholders in its first frame's slot, while the embedding rows lay them out frame by frame (timestamp text,
vision start, the frame's kept tokens, vision end), so a chunk that starts inside a video gets every position after it
shifted (measured: by the first timestamp's length + 1). Where the scheduler cuts depends on the other requests in
the batch, so answers did too (issue 25: 32 of 64 Qwen3-VL answers changed when sent together). Second, vLLM stores
the positions as extra channels in the embedding's dtype, and bfloat16 holds integers exactly only up to 256.

Here each media item's rows carry ``FIELDS`` (relative t, h, w; the row's index in its item; the item's number of
rows before its first vision start; its kind), every integer written as two base-256 digits, exact in any float
dtype. Placement needs only the prompt ids and those channels:

  * an item whose first row is row r > 0 continues one cut by the previous chunk: it starts at ``num_computed``, and
    its base is the position already given to its row 0 (whose relative position is (0, 0, 0));
  * an item starting at row 0 is found in the prompt after the previous one: a video at its first vision start
    followed by a video token (the pruned prompt's lumped run), minus its leading timestamp rows; an image at its
    first image token. Its base is the previous token's largest position + 1;
  * text continues from the previous token's largest position + 1 (what vLLM's unpruned numbering gives too).
"""
from __future__ import annotations

import torch
from torch import Tensor

FIELDS = ("t", "h", "w", "row", "lead", "kind")
T, H, W, ROW, LEAD, KIND = range(len(FIELDS))
KIND_VIDEO, KIND_IMAGE = 1, 2
CHANNELS = 2 * len(FIELDS)  # each field as (high, low) base-256 digits
_LIMIT = 256 * 256


def encode(rel: Tensor, lead: int, kind: int, dtype: torch.dtype) -> Tensor:
    """(L, CHANNELS) channels for an item's L rows: ``rel`` (L, 3) relative (t, h, w) positions, ``lead`` rows before
    its first vision start, ``kind`` KIND_VIDEO or KIND_IMAGE."""
    rel = rel.long()
    n = rel.shape[0]
    fields = torch.empty(n, len(FIELDS), dtype=torch.long, device=rel.device)
    fields[:, :3] = rel
    fields[:, ROW] = torch.arange(n, device=rel.device)
    fields[:, LEAD] = lead
    fields[:, KIND] = kind
    if n and (int(fields.min()) < 0 or int(fields.max()) >= _LIMIT):
        raise ValueError(f"media positions must lie in [0, {_LIMIT}), got [{int(fields.min())}, {int(fields.max())}]")
    return torch.stack([fields // 256, fields % 256], dim=2).flatten(1).to(dtype)


def decode(channels: Tensor) -> Tensor:
    """(L, CHANNELS) -> (L, len(FIELDS)) long. Raises if the channels are not ``encode``'s."""
    digits = channels.round().long().view(channels.shape[0], len(FIELDS), 2)
    fields = digits[..., 0] * 256 + digits[..., 1]
    if fields.shape[0] and not bool(((fields[:, KIND] == KIND_VIDEO) | (fields[:, KIND] == KIND_IMAGE)).all()):
        raise RuntimeError("tango-prune: a media embedding reached the position step without tango-prune's position "
                           "channels; every image and video must pass through the plugin's model class")
    return fields


def _fill_text(pos: Tensor, a: int, b: int) -> None:
    if b > a:
        start = int(pos[:, a - 1].max()) + 1 if a > 0 else 0
        pos[:, a:b] = torch.arange(start, start + b - a, device=pos.device)


def _find_start(ids: Tensor, cursor: int, item: Tensor, vision_start: int, video: int, image: int) -> int:
    kind, lead = int(item[0, KIND]), int(item[0, LEAD])
    if kind == KIND_VIDEO:
        j0 = cursor + lead
        hits = ((ids[j0:-1] == vision_start) & (ids[j0 + 1:] == video)).nonzero()
        found = j0 + int(hits[0]) - lead if len(hits) else -1
    else:
        hits = (ids[cursor:] == image).nonzero()
        found = cursor + int(hits[0]) if len(hits) else -1
    if found < 0:
        raise RuntimeError(f"tango-prune: no {'video' if kind == KIND_VIDEO else 'image'} placeholder after prompt "
                           f"position {cursor} for a media item of this chunk")
    return found


def place(input_ids: Tensor, items: list[Tensor], positions: Tensor, num_computed: int, *, vision_start: int,
          video: int, image: int) -> tuple[Tensor, int]:
    """Positions (3, N) for a prompt of N ids after the prefill chunk starting at ``num_computed`` that holds the
    media rows ``items`` (decoded fields, in prompt order, as vLLM's runner slices them), and the M-RoPE delta.
    Positions before ``num_computed`` are kept; everything after the chunk's last item is numbered as text (later
    chunks place their items over it)."""
    pos = positions.clone()
    n = int(input_ids.numel())
    items = [it for it in items if it.shape[0]]
    if not items:
        return pos, int(pos.max()) + 1 - n
    ids = input_ids.to("cpu", torch.long)
    cursor = num_computed
    for i, it in enumerate(items):
        row0 = int(it[0, ROW])
        if row0 > 0:  # the rest of an item a previous chunk began
            if i != 0:
                raise RuntimeError("tango-prune: only a chunk's first media item can continue a previous chunk's")
            p = num_computed
            base = int(pos[0, p - row0])
        else:
            p = _find_start(ids, cursor, it, vision_start, video, image)
            _fill_text(pos, cursor, p)
            base = int(pos[:, p - 1].max()) + 1 if p > 0 else 0
        end = p + it.shape[0]
        if end > n:
            raise RuntimeError(f"tango-prune: a media item of {it.shape[0]} rows at prompt position {p} runs past the "
                               f"prompt's {n} tokens")
        pos[:, p:end] = it[:, :3].T.to(pos.device) + base
        cursor = end
    _fill_text(pos, cursor, n)
    return pos, int(pos.max()) + 1 - n
