"""The vLLM plugin's M-RoPE placement (integrations/vllm/positions.py), pure: no vLLM needed.

A prompt is cut into prefill chunks as vLLM's runner cuts it (each media item sliced to the rows inside the chunk);
whatever the cut, the final positions equal the ones a direct walk over the prompt gives. Prompts are laid out as a
pruned Qwen3-VL prompt is: a video's placeholders all in its first frame's slot, its embedding rows frame by frame.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from tango_prune.integrations.vllm import positions as P

VS, VE, VID, IMG = 900, 901, 902, 903
IDS = dict(vision_start=VS, video=VID, image=IMG)


def video_item(rng: torch.Generator, frames: int, gh: int, gw: int, keep: float):
    """(prompt ids, rel positions (L, 3), lead) of one pruned video: random timestamp lengths, kept tokens per frame."""
    ts = [int(x) for x in torch.randint(1, 5, (frames,), generator=rng)]
    kept = [sorted(torch.randperm(gh * gw, generator=rng)[: int(torch.randint(0, max(1, int(keep * gh * gw)) + 1, (1,),
                                                                            generator=rng))].tolist())
            for _ in range(frames)]
    if not any(kept):
        kept[0] = [0]
    K = sum(len(k) for k in kept)
    prompt = []
    for f in range(frames):  # lumped: every kept token in frame 0's slot
        prompt += [1] * ts[f] + [VS] + ([VID] * K if f == 0 else []) + [VE]
    rel, top = [], -1

    def text(n):
        nonlocal top
        for _ in range(n):
            top += 1
            rel.append((top, top, top))

    for f in range(frames):
        text(ts[f] + 1)  # timestamp, vision start
        t0 = top + 1
        for j in kept[f]:
            rel.append((t0, t0 + j // gw, t0 + j % gw))
        top = max(max(r) for r in rel)
        text(1)  # vision end
    return prompt, torch.tensor(rel), ts[0]


def image_item(gh: int, gw: int):
    hw = torch.cartesian_prod(torch.arange(gh), torch.arange(gw))
    return [IMG] * (gh * gw), torch.cat([torch.zeros(gh * gw, 1, dtype=torch.long), hw], 1)


def build_prompt(rng: torch.Generator, layout: list[str]):
    """ids (N,), items [(start, rel, lead, kind)], and the reference positions from a direct walk."""
    ids, items = [], []
    for part in layout:
        ids += [int(x) for x in torch.randint(0, 100, (int(torch.randint(1, 6, (1,), generator=rng)),), generator=rng)]
        if part == "video":
            ids.append(VS)  # the template's outer vision start (transformers >= 5.10 keeps it)
            prompt, rel, lead = video_item(rng, int(torch.randint(1, 5, (1,), generator=rng)), 3, 4, 0.4)
            items.append((len(ids), rel, lead, P.KIND_VIDEO))
            ids += prompt
            ids.append(VE)
        else:
            ids.append(VS)
            prompt, rel = image_item(2, 3)
            items.append((len(ids), rel, 0, P.KIND_IMAGE))
            ids += prompt
            ids.append(VE)
    ids += [5, 6, 7]
    ref = torch.empty(3, len(ids), dtype=torch.long)
    nxt, cur = 0, 0
    for start, rel, _, _ in items:
        ref[:, cur:start] = torch.arange(nxt, nxt + start - cur)
        base = int(ref[:, start - 1].max()) + 1
        ref[:, start:start + len(rel)] = rel.T + base
        cur = start + len(rel)
        nxt = int(ref[:, cur - 1].max()) + 1
    ref[:, cur:] = torch.arange(nxt, nxt + len(ids) - cur)
    return torch.tensor(ids), items, ref


def run_chunked(ids, items, chunk: int, dtype=torch.float32):
    """What vLLM's runner hands the model chunk after chunk; returns the final positions and delta."""
    n = len(ids)
    pos = torch.arange(n).expand(3, n).clone()  # the unpruned numbering vLLM starts from: any values will do
    delta = None
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        sliced = []
        for start, rel, lead, kind in items:
            lo, hi = max(s - start, 0), min(e - start, len(rel))
            if lo < hi:
                ch = P.encode(rel, lead, kind, dtype)[lo:hi]
                sliced.append(P.decode(ch))
        pos, delta = P.place(ids, sliced, pos, s, **IDS)
    return pos, delta


@pytest.mark.parametrize("layout", [["video"], ["image", "video"], ["video", "image", "video"], ["image"]])
def test_every_chunk_size_gives_the_one_chunk_positions(layout):
    rng = torch.Generator().manual_seed(len(layout))
    ids, items, ref = build_prompt(rng, layout)
    for chunk in range(1, len(ids) + 1):
        pos, delta = run_chunked(ids, items, chunk)
        assert torch.equal(pos, ref), f"chunk {chunk}"
        assert delta == int(ref.max()) + 1 - len(ids)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), layout=st.lists(st.sampled_from(["video", "image"]), min_size=1, max_size=4),
       chunk=st.integers(1, 64))
def test_positions_do_not_depend_on_the_cut(seed, layout, chunk):
    ids, items, ref = build_prompt(torch.Generator().manual_seed(seed), layout)
    pos, _ = run_chunked(ids, items, chunk, dtype=torch.bfloat16)
    assert torch.equal(pos, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_channels_are_exact_in_every_float_dtype(dtype):
    """bfloat16 holds integers exactly only to 256 (vLLM's own channels lose positions past it); ours to 65535."""
    rel = torch.tensor([[0, 0, 0], [257, 1001, 4097], [65535, 300, 70]])
    fields = P.decode(P.encode(rel, 37, P.KIND_VIDEO, dtype))
    assert torch.equal(fields[:, :3], rel)
    assert fields[:, P.ROW].tolist() == [0, 1, 2] and set(fields[:, P.LEAD].tolist()) == {37}
    assert torch.tensor(1001.0, dtype=torch.bfloat16).item() != 1001  # why the digits


def test_out_of_range_and_foreign_channels_raise():
    with pytest.raises(ValueError, match="media positions must lie in"):
        P.encode(torch.tensor([[65536, 0, 0]]), 0, P.KIND_VIDEO, torch.float32)
    with pytest.raises(RuntimeError, match="without tango-prune's position channels"):
        P.decode(torch.zeros(4, P.CHANNELS))


def test_a_missing_placeholder_raises():
    ids = torch.tensor([1, 2, 3])
    item = P.decode(P.encode(torch.zeros(2, 3, dtype=torch.long), 0, P.KIND_VIDEO, torch.float32))
    with pytest.raises(RuntimeError, match="no video placeholder after prompt position 0"):
        P.place(ids, [item], torch.zeros(3, 3, dtype=torch.long), 0, **IDS)
