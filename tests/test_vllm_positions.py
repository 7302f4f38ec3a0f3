"""The vLLM plugin's M-RoPE numbering (integrations/vllm/positions.py), pure: no vLLM needed.

A prompt is numbered by ``layout`` (what the plugin's ``get_mrope_input_positions`` does once per request), then cut
into prefill chunks as vLLM's runner cuts it (each media item sliced to the rows inside the chunk) and placed chunk
by chunk with ``place``. A prefix-cache hit of c tokens is a run whose first chunk starts at c: the chunks before it
never run, so nothing but ``layout`` numbered them. Whatever the cut and the hit, the positions equal a direct walk
over the prompt with the stock (unpruned) numbering, where each kept token keeps its own position and text after a
media item continues where it continues after the unpruned item.

Prompts are laid out as pruned prompts are: a Qwen3 video's placeholders all in its first frame's slot while its
embedding rows go frame by frame; a Qwen2.5-VL video's kept tokens in one run; an image's tokens in one run.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from tango_prune.integrations.vllm import positions as P

VS, VE, VID, IMG = 900, 901, 902, 903
IDS = dict(vision_start=VS, video=VID, image=IMG)


def _kept(rng, frames: int, per_frame: int, keep: float) -> list[list[int]]:
    cap = max(1, int(keep * per_frame))
    kept = [sorted(torch.randperm(per_frame, generator=rng)[: int(torch.randint(0, cap + 1, (1,), generator=rng))]
                   .tolist()) for _ in range(frames)]
    if not any(kept):
        kept[0] = [per_frame - 1]
    return kept


class Walk:
    """The reference: a direct walk over the unpruned numbering, writing the positions of the rows that exist."""

    def __init__(self):
        self.rows: list[tuple[int, int, int]] = []
        self.top = -1  # the largest position so far

    def text(self, n: int) -> None:
        for _ in range(n):
            self.top += 1
            self.rows.append((self.top, self.top, self.top))

    def grid(self, cells: list[tuple[int, int, int]], extent: int) -> None:
        st0 = self.top + 1
        self.rows += [(st0 + t, st0 + h, st0 + w) for t, h, w in cells]
        self.top = st0 + extent - 1  # the next text goes one past the unpruned grid


def qwen3_video(rng, walk: Walk, gh: int, gw: int):
    """Prompt ids, rel rows (L, 3) and lead of a pruned Qwen3 video; appends its reference rows to ``walk``."""
    frames = int(torch.randint(1, 5, (1,), generator=rng))
    ts = [int(x) for x in torch.randint(1, 4, (frames,), generator=rng)]
    kept = _kept(rng, frames, gh * gw, 0.4)
    K = sum(len(k) for k in kept)
    first = len(walk.rows)
    for f in range(frames):
        walk.text(ts[f] + 1)  # timestamp, vision start
        walk.grid([(0, j // gw, j % gw) for j in kept[f]], max(gh, gw))
        walk.text(1)  # vision end
    rel = torch.tensor(walk.rows[first:])
    rel -= rel[0, 0].item()
    prompt = []
    for f in range(frames):  # lumped: every kept token in frame 0's slot
        prompt += [1] * ts[f] + [VS] + ([VID] * K if f == 0 else []) + [VE]
    return prompt, rel, ts[0], (frames, gh, gw)


def qwen25_video(rng, walk: Walk, gh: int, gw: int, t_step: int):
    frames = int(torch.randint(1, 5, (1,), generator=rng))
    kept = _kept(rng, frames, gh * gw, 0.3)
    cells = [(f * t_step, j // gw, j % gw) for f in range(frames) for j in kept[f]]
    first = len(walk.rows)
    walk.grid(cells, max((frames - 1) * t_step, gh - 1, gw - 1) + 1)
    rel = torch.tensor(walk.rows[first:]) - (walk.top - max((frames - 1) * t_step, gh - 1, gw - 1))
    return [VID] * len(cells), rel


def image(walk: Walk, gh: int, gw: int):
    cells = [(0, h, w) for h in range(gh) for w in range(gw)]
    first = len(walk.rows)
    walk.grid(cells, max(gh, gw))
    return [IMG] * len(cells), torch.tensor(walk.rows[first:]) - (walk.top - max(gh, gw) + 1)


def build_prompt(rng: torch.Generator, parts: list[str]):
    """ids (N,), items [(start, rel, lead, kind)], layout runs (starts, lengths, extents), reference (3, N)."""
    walk, ids, items, runs = Walk(), [], [], ([], [], [])

    def text(tokens):
        ids.extend(tokens)
        walk.text(len(tokens))

    for part in parts:
        text([int(x) for x in torch.randint(0, 100, (int(torch.randint(1, 6, (1,), generator=rng)),), generator=rng)])
        text([VS])  # the template's outer vision start
        start = len(ids)
        if part == "video":
            prompt, rel, lead, (frames, gh, gw) = qwen3_video(rng, walk, 3, 4)
            items.append((start, rel, lead, P.KIND_VIDEO))
            vs = [start + i for i, x in enumerate(prompt) if x == VS]
            ve = [start + i for i, x in enumerate(prompt) if x == VE]
            runs[0].extend(s + 1 for s in vs), runs[1].extend(e - s - 1 for s, e in zip(vs, ve))
            runs[2].extend([max(gh, gw)] * frames)
        elif part == "video25":
            prompt, rel = qwen25_video(rng, walk, 3, 4, t_step=2)
            items.append((start, rel, 0, P.KIND_VIDEO_RUN))
            runs[0].append(start), runs[1].append(len(prompt))
            runs[2].append(int(walk.top - walk.rows[start - 1][0]))
        else:
            prompt, rel = image(walk, 2, 3)
            items.append((start, rel, 0, P.KIND_IMAGE))
            runs[0].append(start), runs[1].append(len(prompt)), runs[2].append(3)
        ids += prompt
        text([VE])
    text([5, 6, 7])
    ref = torch.tensor(walk.rows).T.contiguous()
    return torch.tensor(ids), items, tuple(torch.tensor(r, dtype=torch.long) for r in runs), ref


def run_chunked(ids, items, runs, chunk: int, cached: int = 0, dtype=torch.float32):
    """What vLLM's runner does: ``layout`` once, then ``place`` chunk after chunk from the first uncached token."""
    n = len(ids)
    pos, delta = P.layout(n, *runs)
    for s in range(cached, n, chunk):
        e = min(s + chunk, n)
        sliced = []
        for start, rel, lead, kind in items:
            lo, hi = max(s - start, 0), min(e - start, len(rel))
            if lo < hi:
                sliced.append(P.decode(P.encode(rel, lead, kind, dtype)[lo:hi]))
        pos, delta = P.place(ids, sliced, pos, s, **IDS)
    return pos, delta


LAYOUTS = [["video"], ["image", "video"], ["video", "image", "video"], ["image"], ["video25"],
           ["video25", "video25", "image"], ["image", "video25"]]


@pytest.mark.parametrize("parts", LAYOUTS, ids="+".join)
def test_every_chunk_size_and_cache_hit_gives_the_stock_numbering(parts):
    ids, items, runs, ref = build_prompt(torch.Generator().manual_seed(len(parts)), parts)
    n = len(ids)
    for cached in range(n):
        for chunk in (1, 2, 3, 5, 8, n):
            pos, delta = run_chunked(ids, items, runs, chunk, cached)
            assert torch.equal(pos[:, cached:], ref[:, cached:]), f"cache hit {cached}, chunk {chunk}"
            assert delta == int(ref[:, -1].max()) + 1 - n


def test_layout_alone_numbers_every_text_token():
    """The positions a request starts from (no chunk placed yet) are already exact wherever the token is text: a
    prefix-cache hit may skip every chunk that holds a video, and the text after it must still be right."""
    ids, items, runs, ref = build_prompt(torch.Generator().manual_seed(7), ["video", "image", "video25", "video"])
    pos, delta = P.layout(len(ids), *runs)
    media = torch.zeros(len(ids), dtype=torch.bool)
    for start, rel, _, _ in items:
        media[start:start + len(rel)] = True
    assert torch.equal(pos[:, ~media], ref[:, ~media])
    assert delta == int(ref[:, -1].max()) + 1 - len(ids)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), parts=st.lists(st.sampled_from(["video", "video25", "image"]), min_size=1,
                                                     max_size=4), chunk=st.integers(1, 64), hit=st.floats(0, 1))
def test_positions_do_not_depend_on_the_cut_or_the_hit(seed, parts, chunk, hit):
    ids, items, runs, ref = build_prompt(torch.Generator().manual_seed(seed), parts)
    cached = int(hit * (len(ids) - 1))
    pos, _ = run_chunked(ids, items, runs, chunk, cached, dtype=torch.bfloat16)
    assert torch.equal(pos[:, cached:], ref[:, cached:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_channels_are_exact_in_every_float_dtype(dtype):
    """bfloat16 holds integers exactly only to 256 (vLLM's own channels lose positions past it); ours to 256**3."""
    rel = torch.tensor([[0, 0, 0], [257, 1001, 4097], [65535, 300, 70], [70_000, 1_000_000, P.LIMIT - 1]])
    fields = P.decode(P.encode(rel, 37, P.KIND_VIDEO_RUN, dtype))
    assert torch.equal(fields[:, :3], rel)
    assert fields[:, P.ROW].tolist() == [0, 1, 2, 3] and set(fields[:, P.LEAD].tolist()) == {37}
    assert torch.tensor(1001.0, dtype=torch.bfloat16).item() != 1001  # why the digits


def test_an_hour_of_video_is_placed_exactly():
    """3,600 frames of a 2 x 2 Qwen2.5-VL grid at t step 2: positions and rows far past 65,536."""
    frames, t_step = 3600, 2
    cells = torch.tensor([(f * t_step, h, w) for f in range(frames) for h in range(2) for w in range(2)])
    ids = torch.tensor([7, VS] + [VID] * len(cells) + [VE, 8])
    runs = (torch.tensor([2]), torch.tensor([len(cells)]), torch.tensor([(frames - 1) * t_step + 1]))
    pos, _ = P.layout(len(ids), *runs)
    item = P.decode(P.encode(cells, 0, P.KIND_VIDEO_RUN, torch.bfloat16))
    pos, delta = P.place(ids, [item], pos, 0, **IDS)
    assert pos[:, 2:-2].T.tolist() == (cells + 2).tolist()
    assert pos[:, -2:].T.tolist() == [[7201] * 3, [7202] * 3] and delta == 7203 - len(ids)  # last t 7200


def test_out_of_range_and_foreign_channels_raise():
    with pytest.raises(ValueError, match="media positions must lie in"):
        P.encode(torch.tensor([[P.LIMIT, 0, 0]]), 0, P.KIND_VIDEO, torch.float32)
    with pytest.raises(RuntimeError, match="without tango-prune's position channels"):
        P.decode(torch.zeros(4, P.CHANNELS))


def test_a_missing_placeholder_raises():
    ids = torch.tensor([1, 2, 3])
    item = P.decode(P.encode(torch.zeros(2, 3, dtype=torch.long), 0, P.KIND_VIDEO, torch.float32))
    with pytest.raises(RuntimeError, match="no video placeholder after prompt position 0"):
        P.place(ids, [item], torch.zeros(3, 3, dtype=torch.long), 0, **IDS)


def test_frame_rows_number_a_pruned_qwen3_video_as_the_unpruned_one():
    """The rows of a pruned Qwen3 video (its own frame-by-frame layout, not the prompt's lumped one) at the positions
    the unpruned video gives them: each kept token its own, text one past the unpruned frame."""
    rng = torch.Generator().manual_seed(3)
    for _ in range(20):
        walk = Walk()
        gh, gw = int(torch.randint(1, 5, (1,), generator=rng)), int(torch.randint(1, 5, (1,), generator=rng))
        frames, ts = 3, [2, 1, 3]
        kept = _kept(rng, frames, gh * gw, 0.5)
        repl, cells = [], []
        for f in range(frames):
            walk.text(ts[f] + 1)
            walk.grid([(0, j // gw, j % gw) for j in kept[f]], max(gh, gw))
            walk.text(1)
            repl += [1] * ts[f] + [VS] + [VID] * len(kept[f]) + [VE]
            cells += kept[f]
        rel = P.frame_rows(torch.tensor(repl), vision_start=VS, vision_end=VE, video=VID, extent=max(gh, gw),
                           kept=torch.tensor(cells, dtype=torch.long), grid_w=gw)
        assert rel.tolist() == [list(r) for r in walk.rows]
