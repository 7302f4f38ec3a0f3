"""Tango's opt-in brief-event guard (TangoConfig.events, issue 27): what it changes and what it leaves alone."""
import pytest
import torch

from tango_prune import TangoConfig, VideoTokens, get_method, prune_video_tokens
from tango_prune.core.saliency import with_novelty
from tango_prune.core.tango import frame_budget

OBJ = 1 * 10 + 9  # frame 1, position 9


def brief_object(seed=0, eps=0.7, D=16, object_saliency=1.0):
    """Two frames of 2 x 5: positions 0-4 a still background (static), 5-9 a changing texture (dynamic), and in
    frame 1 at position 9 a brief object far from everything. Tango's budget for the dynamic part at r = 0.1 is one
    token per frame (n = ceil(5 r'), r' = 0.133), so the release keeps no salient token there (floor(0.6) = 0)."""
    g = torch.Generator().manual_seed(seed)
    T, H, W = 2, 2, 5
    f = torch.randn(1, H * W, D, generator=g).expand(T, H * W, D).clone()
    base = torch.randn(D, generator=g)
    f[:, 5:] = base + eps * torch.randn(T, 5, D, generator=g)
    f[1, 9] = -base
    sal = torch.rand(T, H * W, generator=g) * 0.5
    sal[1, 9] = object_saliency
    return VideoTokens(f, sal, (T, H, W))


def kept_as_itself(out, i):
    return bool(((out.index == i) & ~out.merged).any())


@pytest.mark.parametrize("seed", range(4))
def test_release_merges_the_most_salient_brief_object_into_a_texture_anchor(seed):
    # the mechanism of issue 27 in miniature: one token per frame is a density vote (DPC-kNN), which the far,
    # lone object loses, although it is its frame's most salient token
    out = prune_video_tokens(brief_object(seed), TangoConfig(retention=0.1, segment="none"))
    assert out.info["static_positions"] == [5]
    assert not kept_as_itself(out, OBJ)


@pytest.mark.parametrize("seed", range(4))
def test_events_keeps_the_brief_object_at_the_same_count(seed):
    vt = brief_object(seed)
    ref = prune_video_tokens(vt, TangoConfig(retention=0.1, segment="none"))
    out = prune_video_tokens(vt, TangoConfig(retention=0.1, segment="none", events=2.0))
    assert kept_as_itself(out, OBJ) and out.num_kept == ref.num_kept


def test_events_finds_a_novel_object_the_saliency_misses():
    vt = brief_object(0, object_saliency=0.01)  # the tower looks elsewhere; only its novelty gives it away
    out = prune_video_tokens(vt, TangoConfig(retention=0.1, segment="none", events=2.0))
    assert kept_as_itself(out, OBJ)


def test_events_off_is_the_release_path():
    vt = brief_object(1)
    a = prune_video_tokens(vt, TangoConfig(retention=0.1))
    b = prune_video_tokens(vt, TangoConfig(retention=0.1, events=0.0))
    assert torch.equal(a.index, b.index) and torch.equal(a.features, b.features)
    assert TangoConfig().events == 0.0 and TangoConfig.release().events == 0.0


def test_frame_budget_floor():
    assert frame_budget(5, 0.133, 0.4) == (0, 1)  # the release: a one-token frame has no salient token
    assert frame_budget(5, 0.133, 0.4, min_salient=1) == (1, 0)
    assert frame_budget(16, 0.1, 0.4, min_salient=1) == (1, 1)  # no change where the release already has one
    assert frame_budget(16, 0.1, 1.0, min_salient=1) == (1, 1)


def test_with_novelty_scores_change_against_the_previous_frame():
    sal = torch.tensor([[1.0, 3.0], [2.0, 2.0], [4.0, 1.0]])
    sim = torch.tensor([[1.0, 0.5], [0.0, 1.0]])  # (T - 1, L)
    out = with_novelty(sal, sim, 2.0)
    # frame 0 compares with frame 1; every frame's saliency is divided by its maximum
    assert torch.allclose(out, torch.tensor([[1 / 3, 1 + 1.0], [1 + 0.0, 1 + 1.0], [1 + 2.0, 0.25]]))
    assert with_novelty(sal, sim, 0.0) is sal
    with pytest.raises(ValueError, match="tok_sim must be"):
        with_novelty(sal, sim[:1], 1.0)


def test_events_is_reported_and_bad_values_fail():
    vt = brief_object(0)
    out = prune_video_tokens(vt, TangoConfig(retention=0.5, events=2.0, sink_indices=(9,), segment="none"))
    assert out.info["events"] == 2.0
    for bad in (-1.0, float("nan"), float("inf"), True, "2"):
        with pytest.raises(ValueError, match="events must be"):
            TangoConfig(events=bad)
    assert get_method("tango")(retention=0.1, events=2.0).config.events == 2.0
