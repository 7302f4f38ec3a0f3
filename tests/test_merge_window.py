"""TangoConfig.merge_window_frames: a segment's dynamic context merged W frames at a time (bounded cost on long
segments with nothing static), the release's whole-segment merge when None or when W covers the segment."""
import pytest
import torch

from tango_prune import TangoConfig, VideoTokens, prune_video_tokens


def moving(T=24, side=6, dim=512):
    """One segment, nothing static: each token ~0.74 similar to the frame before (segment_tau 0.65 < 0.74 <
    static_tau 0.8): a base of equal-norm rows plus 0.6x fresh noise per frame."""
    g = torch.Generator().manual_seed(0)
    L = side * side
    base = torch.nn.functional.normalize(torch.randn(L, dim, generator=g), dim=-1) * dim ** 0.5
    feats = base + 0.6 * torch.randn(T, L, dim, generator=g)
    return VideoTokens(feats, torch.rand(T, L, generator=g), (T, side, side))


def test_the_video_is_one_segment_with_nothing_static():
    out = prune_video_tokens(moving(), TangoConfig(retention=0.1))
    assert out.segments == [24] and out.info["static_positions"] == [0]


@pytest.mark.parametrize("w", [24, 25, 1000])
def test_a_window_covering_the_segment_is_the_release(w):
    vt = moving()
    a = prune_video_tokens(vt, TangoConfig(retention=0.1))
    b = prune_video_tokens(vt, TangoConfig(retention=0.1, merge_window_frames=w))
    assert torch.equal(a.index, b.index) and torch.equal(a.features, b.features)
    assert torch.equal(a.assignment, b.assignment)


@pytest.mark.parametrize("w", [1, 5, 8])
def test_windows_merge_inside_themselves_with_the_same_budget(w):
    vt = moving()
    L = 36
    whole = prune_video_tokens(vt, TangoConfig(retention=0.1))
    got = prune_video_tokens(vt, TangoConfig(retention=0.1, merge_window_frames=w))
    assert got.num_kept == whole.num_kept and got.segments == whole.segments
    # every token is represented inside its own window
    rep = got.assignment
    ok = rep >= 0
    frame_of_token = torch.arange(24 * L)[ok] // L
    frame_of_rep = got.index[rep[ok]] // L
    assert torch.equal(frame_of_token // w, frame_of_rep // w)
    assert not torch.equal(whole.index[whole.assignment[ok]] // L // w, frame_of_token // w)  # the whole merge crosses


def test_bad_window_is_a_one_line_error():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="merge_window_frames must be None"):
            TangoConfig(merge_window_frames=bad)


def test_registry_takes_the_option():
    from tango_prune import get_method

    out = get_method("tango")(retention=0.1, merge_window_frames=4)(moving())
    assert out.num_kept == prune_video_tokens(moving(), TangoConfig(retention=0.1)).num_kept
    assert isinstance(moving(), VideoTokens)
