"""Tango chunk by chunk (stream.TangoStream): equal to the whole-video pruner where its decisions are local, the exact
count always, and never more than one chunk plus ``max_carry`` frames held."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tango_prune import TangoConfig, VideoTokens, prune_video_tokens
from tango_prune.core.budget import exact_count
from tango_prune.core.carry import carry
from tango_prune.stream import TangoStream, prune_video_stream

H = W = 4
L, D = H * W, 32


def scenes(lengths: list[int], seed: int = 0, noise: float = 0.02, saliency: bool = True) -> VideoTokens:
    """Scenes of nearly still frames (each scene its own content, a little noise per frame): holitom cuts exactly
    at the scene changes, on the whole video and in any window of it."""
    g = torch.Generator().manual_seed(seed)
    frames = []
    for n in lengths:
        base = torch.randn(1, L, D, generator=g)
        frames.append(base + noise * torch.randn(n, L, D, generator=g))
    f = torch.cat(frames)
    T = f.shape[0]
    sal = torch.rand(T, L, generator=g) if saliency else None
    return VideoTokens(f, sal, (T, H, W), torch.arange(T, dtype=torch.float32) * 0.5)


def chunks(vt: VideoTokens, cuts: list[int]):
    """vt's frames in chunks of the sizes ``cuts`` (summing to T)."""
    a = 0
    for n in cuts:
        yield VideoTokens(vt.features[a : a + n], None if vt.saliency is None else vt.saliency[a : a + n],
                          (n, H, W), vt.timestamps[a : a + n])
        a += n


def even(T: int, c: int) -> list[int]:
    return [min(c, T - a) for a in range(0, T, c)]


@pytest.mark.parametrize("chunk", [1, 2, 5, 7, 24])
def test_reference_budget_equals_the_whole_video_when_segments_are_scenes(chunk):
    vt = scenes([6, 4, 9, 5])
    cfg = TangoConfig(retention=0.25)
    whole = prune_video_tokens(vt, cfg)
    got = prune_video_stream(chunks(vt, even(24, chunk)), cfg)
    assert got.segments == whole.segments == [6, 4, 9, 5]
    assert torch.equal(got.index, whole.index) and torch.equal(got.features, whole.features)
    assert torch.equal(got.merged, whole.merged) and torch.equal(got.assignment, whole.assignment)
    assert torch.equal(got.positions, whole.positions) and got.grid == whole.grid
    assert got.info["static_positions"] == whole.info["static_positions"]


def test_feature_saliency_and_fixed_sinks_equal_the_whole_video():
    vt = scenes([5, 7], saliency=False)
    cfg = TangoConfig(retention=0.2, sink_indices=[0, 3])
    whole = prune_video_tokens(vt, cfg)
    got = prune_video_stream(chunks(vt, [3, 3, 3, 3]), cfg)
    assert got.info["saliency"] == whole.info["saliency"] == "feature-distinctiveness"
    assert torch.equal(got.index, whole.index) and torch.equal(got.features, whole.features)


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 8), min_size=1, max_size=5), data=st.data(),
       retention=st.sampled_from([0.05, 0.1, 0.3, 0.7]), noise=st.sampled_from([0.02, 0.5, 3.0]))
def test_exact_budget_any_chunking(lengths, data, retention, noise):
    """Any chunking: the whole video's exact count, sorted unique indices, every token represented by a kept row or
    dropped (-1), each kept row representing itself."""
    vt = scenes(lengths, noise=noise)
    T = vt.grid[0]
    cuts = data.draw(st.lists(st.integers(1, T), min_size=1, max_size=T).filter(lambda c: sum(c) >= T))
    cuts = [c for c in cuts]
    while sum(cuts) > T:  # trim to T frames
        cuts[-1] -= min(cuts[-1], sum(cuts) - T)
        cuts = [c for c in cuts if c > 0]
    cfg = TangoConfig(retention=retention, budget="exact")
    got = prune_video_stream(chunks(vt, cuts), cfg, max_carry=data.draw(st.integers(1, 8)))
    K = got.num_kept
    assert K == exact_count(retention, T * L) == prune_video_tokens(vt, cfg).num_kept
    assert torch.all(got.index[1:] > got.index[:-1]) and 0 <= int(got.index[0]) and int(got.index[-1]) < T * L
    assert got.features.shape == (K, D) and sum(got.segments) == T
    assert got.assignment.shape == (T * L,) and int(got.assignment.max()) < K and int(got.assignment.min()) >= -1
    assert torch.equal(got.assignment[got.index], torch.arange(K))


def test_memory_stays_one_chunk_plus_max_carry_on_a_single_long_segment():
    """Nearly still frames for 96 frames: one segment on the whole video; the stream closes the open segment
    when it passes max_carry, so it never holds more than max_carry + one chunk of frames."""
    vt = scenes([96], noise=0.01)
    stream = TangoStream(TangoConfig(retention=0.1, budget="exact"), max_carry=16)
    held = []
    for c in chunks(vt, even(96, 8)):
        stream.push(c)
        held.append(stream._open())
    out = stream.finish()
    assert max(held) <= 16 and out.num_kept == exact_count(0.1, 96 * L)
    assert all(n <= 16 + 8 for n in out.segments)  # closed where the carry would have passed max_carry


def test_extras_are_carried_as_over_the_whole_video():
    vt = scenes([4, 6, 3])
    cfg = TangoConfig(retention=0.3)
    deep = [torch.randn(13 * L, 8), torch.randn(13 * L, 5)]
    whole = prune_video_tokens(vt, cfg)
    stream = TangoStream(cfg)
    a = 0
    for c in chunks(vt, [5, 5, 3]):
        n = c.grid[0] * L
        stream.push(c, extras=[e[a : a + n] for e in deep])
        a += n
    got = stream.finish()
    assert torch.equal(got.index, whole.index)
    for mine, e in zip(stream.carried, deep):
        assert torch.allclose(mine, carry(whole, e), atol=1e-6)


def test_keep_all_is_the_identity():
    vt = scenes([3, 3])
    got = prune_video_stream(chunks(vt, [2, 4]), TangoConfig(retention=1.0))
    assert torch.equal(got.index, torch.arange(6 * L)) and torch.equal(got.features, vt.features.reshape(-1, D))


def test_bad_input_is_a_one_line_error():
    vt = scenes([4])
    with pytest.raises(ValueError, match="brief_frames"):
        TangoStream(TangoConfig(brief_frames=2))
    with pytest.raises(ValueError, match="max_carry"):
        TangoStream(max_carry=0)
    with pytest.raises(ValueError, match="no frames were pushed"):
        TangoStream().finish()
    s = TangoStream()
    s.push(next(chunks(vt, [2, 2])))
    with pytest.raises(ValueError, match="frame grid"):
        s.push(VideoTokens(torch.randn(2, 9, D), None, (2, 3, 3)))
    with pytest.raises(ValueError, match="extras"):
        s.push(next(chunks(vt, [2, 2])), extras=[torch.randn(5, 3)])
    with pytest.raises(ValueError, match="VideoTokens"):
        s.push(vt.features)
