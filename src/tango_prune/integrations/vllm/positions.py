"""M-RoPE positions of a pruned Qwen prompt (Qwen2.5-VL, Qwen3-VL, Qwen3.5): the same however the scheduler cuts
the prompt into prefill chunks, and however much of it a prefix-cache hit skips.

Two steps, as vLLM's runner calls them:

  * ``layout`` (from the model's ``get_mrope_input_positions``, once per request, before any chunk runs) numbers the
    whole prompt from the ids and the media grids alone. Every text token gets its final position: after a media item,
    text continues where it continues after the *unpruned* item (the stock model's numbering, and what
    ``apply()`` gives in Hugging Face), which depends on the grid, never on which tokens the pruner kept. Media rows get
    a provisional position (their item's base).
  * ``place`` (from ``recompute_mrope_positions``, once per prefill chunk) writes the exact position of each media
    row in the chunk, from the channels ``encode`` appended to the row's embedding. Text is never rewritten.

Why the split (issue 35): a prefix-cache hit skips the chunks that hold a video, so nothing ever recomputes what comes
after it; vLLM's own layout of a pruned prompt numbers the text after a video for placeholders that are not there
(Qwen3: the lumped run of a pruned video read as whole frames; Qwen2.5-VL: an unpruned grid's worth of tokens, which
with two videos runs past the second one and crashes vLLM's step). Answers then changed when a video was asked again.

The channels carry ``FIELDS`` per row (relative t, h, w; the row's index in its item; the rows before the item's
first vision start; its kind), every integer as ``DIGITS`` base-256 digits: exact in any float dtype (bfloat16 holds
integers exactly only to 256) up to 256**DIGITS, far past an hour of video.
"""
from __future__ import annotations

import torch
from torch import Tensor

FIELDS = ("t", "h", "w", "row", "lead", "kind")
T, H, W, ROW, LEAD, KIND = range(len(FIELDS))
# KIND_VIDEO: a Qwen3-family video (rows = timestamps, vision start/end and the kept tokens, frame by frame);
# KIND_IMAGE: image rows; KIND_VIDEO_RUN: a Qwen2.5-VL video (rows = the kept tokens only)
KIND_VIDEO, KIND_IMAGE, KIND_VIDEO_RUN = 1, 2, 3
DIGITS = 3
CHANNELS = DIGITS * len(FIELDS)
LIMIT = 256 ** DIGITS
_PLACES = torch.tensor([256 ** (DIGITS - 1 - i) for i in range(DIGITS)])


def encode(rel: Tensor, lead: int, kind: int, dtype: torch.dtype) -> Tensor:
    """(L, CHANNELS) channels for an item's L rows: ``rel`` (L, 3) relative (t, h, w) positions, ``lead`` rows before
    its first vision start, ``kind`` one of the KIND_* constants."""
    rel = rel.long()
    n = rel.shape[0]
    fields = torch.empty(n, len(FIELDS), dtype=torch.long, device=rel.device)
    fields[:, :3] = rel
    fields[:, ROW] = torch.arange(n, device=rel.device)
    fields[:, LEAD] = lead
    fields[:, KIND] = kind
    if n and (int(fields.min()) < 0 or int(fields.max()) >= LIMIT):
        raise ValueError(f"media positions must lie in [0, {LIMIT}), got [{int(fields.min())}, {int(fields.max())}]")
    places = _PLACES.to(rel.device)
    return ((fields[..., None] // places) % 256).flatten(1).to(dtype)


def decode(channels: Tensor) -> Tensor:
    """(L, CHANNELS) -> (L, len(FIELDS)) long. Raises if the channels are not ``encode``'s."""
    digits = channels.round().long().view(channels.shape[0], len(FIELDS), DIGITS)
    fields = (digits * _PLACES.to(digits.device)).sum(-1)
    kinds = fields[:, KIND]
    if fields.shape[0] and not bool(((kinds == KIND_VIDEO) | (kinds == KIND_IMAGE) | (kinds == KIND_VIDEO_RUN)).all()):
        raise RuntimeError("tango-prune: a media embedding reached the position step without tango-prune's position "
                           "channels; every image and video must pass through the plugin's model class")
    return fields


def layout(n: int, run_start: Tensor, run_len: Tensor, run_extent: Tensor) -> tuple[Tensor, int]:
    """Positions (3, n) of a prompt of n tokens and its M-RoPE delta, exact for every text token.

    The media tokens form runs (a run may be empty: a pruned frame whose tokens all went elsewhere): run i starts at
    prompt index ``run_start[i]``, holds ``run_len[i]`` tokens and spans ``run_extent[i]`` positions unpruned, so the
    token after it sits ``1 + run_extent[i]`` past the token before it. Each run's tokens sit provisionally at its
    first position (``place`` moves them). Everything else counts up by one."""
    step = torch.ones(n + 1, dtype=torch.long)
    start, length, extent = (x.long().flatten() for x in (run_start, run_len, run_extent))
    inside = torch.zeros(n + 2, dtype=torch.long)  # the second and later tokens of each run do not advance
    long_runs = length > 1
    inside.index_add_(0, start[long_runs] + 1, torch.ones_like(start[long_runs]))
    inside.index_add_(0, start[long_runs] + length[long_runs], -torch.ones_like(start[long_runs]))
    step[inside.cumsum(0)[: n + 1] > 0] = 0
    step[start + length] = extent + (length == 0).long()  # index n (a run ends the prompt) is a spare slot
    pos = step.cumsum(0)[:n] - 1
    # decoding continues one past the last token, as in ``place`` (which sees the last token's final position)
    return pos.expand(3, n).clone(), int(pos[-1]) + 1 - n if n else 0


def frame_rows(repl: Tensor, *, vision_start: int, vision_end: int, video: int, extent: int, kept: Tensor,
               grid_w: int) -> Tensor:
    """Relative (t, h, w) positions (L, 3) of a pruned Qwen3-family video's L rows (``repl``: the ids of its
    timestamps, vision starts, kept tokens and vision ends, frame by frame). ``kept``: each kept token's index in its
    frame (row order); ``extent``: max(merged grid h, w). A frame's tokens sit at (s, s + h, s + w), s one past its
    vision start; text rows count up and continue one past the unpruned frame, as vLLM numbers an unpruned video."""
    starts = (repl == vision_start).nonzero().flatten()
    ends = (repl == vision_end).nonzero().flatten()
    pos, _ = layout(repl.numel(), starts + 1, ends - starts - 1, torch.full_like(starts, extent))
    rel = pos.T.clone()
    tokens = repl == video
    rel[tokens, 1] += kept // grid_w
    rel[tokens, 2] += kept % grid_w
    return rel


def _find_start(ids: Tensor, cursor: int, item: Tensor, vision_start: int, video: int, image: int) -> int:
    kind, lead = int(item[0, KIND]), int(item[0, LEAD])
    if kind == KIND_VIDEO:
        j0 = cursor + lead
        hits = ((ids[j0:-1] == vision_start) & (ids[j0 + 1:] == video)).nonzero()
        found = j0 + int(hits[0]) - lead if len(hits) else -1
    else:
        hits = (ids[cursor:] == (image if kind == KIND_IMAGE else video)).nonzero()
        found = cursor + int(hits[0]) if len(hits) else -1
    if found < 0:
        raise RuntimeError(f"tango-prune: no {'image' if kind == KIND_IMAGE else 'video'} placeholder after prompt "
                           f"position {cursor} for a media item of this chunk")
    return found


def place(input_ids: Tensor, items: list[Tensor], positions: Tensor, num_computed: int, *, vision_start: int,
          video: int, image: int) -> tuple[Tensor, int]:
    """``positions`` (3, N, from ``layout``) with the media rows of the prefill chunk starting at ``num_computed``
    placed, and the M-RoPE delta. ``items``: the chunk's media rows, decoded, one tensor per item in prompt order (as
    vLLM's runner slices them). An item's base is one past the largest position of the token before its row 0: text,
    or the last row of a Qwen3 video (a vision end, whose position ``layout`` already made exact)."""
    pos = positions.clone()
    n = int(input_ids.numel())
    ids = input_ids.to("cpu", torch.long)
    cursor = num_computed
    for i, it in enumerate(item for item in items if item.shape[0]):
        row0 = int(it[0, ROW])
        if row0 > 0:  # the rest of an item that a previous chunk (or a prefix-cache hit) began
            if i != 0:
                raise RuntimeError("tango-prune: only a chunk's first media item can continue a previous chunk's")
            p = num_computed
        else:
            p = _find_start(ids, cursor, it, vision_start, video, image)
        first = p - row0
        base = int(pos[:, first - 1].max()) + 1 if first > 0 else 0
        end = p + it.shape[0]
        if end > n:
            raise RuntimeError(f"tango-prune: a media item of {it.shape[0]} rows at prompt position {p} runs past the "
                               f"prompt's {n} tokens")
        pos[:, p:end] = it[:, :3].T.to(pos.device) + base
        cursor = end
    return pos, int(pos[:, -1].max()) + 1 - n if n else 0
