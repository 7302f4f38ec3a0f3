"""Keeping brief events (TangoConfig.brief_frames, issue 27): what is found, what is kept, what is left alone."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tango_prune import TangoConfig, VideoTokens, get_method, prune_video_tokens
from tango_prune.core.events import brief_scores, brief_tokens, lagged_similarity

T, H, W, D = 6, 2, 5, 16
L = H * W


def video(seed=0, eps=0.7, object_saliency=1.0, frames=(3,), at=9):
    """T frames of 2 x 5: positions 0-4 a still background, 5-9 a changing texture around a common direction, and
    at position ``at`` in ``frames`` an object far from everything (the release's one-token frames lose it to a
    density vote: test_release_merges_the_most_salient_brief_object_into_a_texture_anchor below)."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(1, L, D, generator=g).expand(T, L, D).clone()
    base = torch.randn(D, generator=g)
    f[:, 5:] = base + eps * torch.randn(T, 5, D, generator=g)
    for t in frames:
        f[t, at] = -base
    sal = torch.rand(T, L, generator=g) * 0.5
    for t in frames:
        sal[t, at] = object_saliency
    return VideoTokens(f, sal, (T, H, W))


def kept_as_itself(out, i):
    return bool(((out.index == i) & ~out.merged).any())


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 7), st.integers(1, 5), st.integers(0, 4), st.integers(0, 10_000))
def test_lagged_similarity_is_the_cosine_k_frames_apart(frames, positions, lags, seed):
    x = torch.randn(frames, positions, 8, generator=torch.Generator().manual_seed(seed))
    out = lagged_similarity(x, lags)
    assert out.shape == (lags + 1, frames, positions)
    for k in range(lags + 1):
        for u in range(frames):
            if u + k < frames:
                assert torch.allclose(out[k, u], F.cosine_similarity(x[u], x[u + k], dim=-1), atol=1e-5)
            else:
                assert out[k, u].isnan().all()


def test_lag1_from_consecutive_similarity_is_used_as_given():
    from tango_prune.core.segment import consecutive_similarity

    x = torch.randn(7, L, 32, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    tok_sim, _ = consecutive_similarity(x)
    given = lagged_similarity(x, 3, tok_sim)
    assert torch.equal(given[1, :6], tok_sim)
    assert torch.allclose(given, lagged_similarity(x, 3), atol=1e-5, equal_nan=True)
    # the scores, not only where they are -inf: the given lag-1 must feed them as the recomputed one does
    # (measured difference 1.2e-7 at most over 5 seeds: float32 rounding of the two cosines)
    torch.testing.assert_close(brief_scores(x, 2, tok_sim), brief_scores(x, 2), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="lag1 must be"):
        lagged_similarity(x, 3, tok_sim[:3])


@pytest.mark.parametrize("frames", [(0,), (2,), (2, 3), (4, 5), (5,)])
def test_a_brief_object_scores_high_at_its_onset_only(frames):
    s = brief_scores(video(0, frames=frames).features, 2)
    onset = frames[0] * L + 9
    assert s.flatten()[onset] > 0.75  # before and after agree; the object is opposite the texture's direction
    others = torch.ones(T * L, dtype=torch.bool)
    others[onset] = False
    assert s.flatten()[others].max() < 0.5


def test_moving_pans_and_long_stays_do_not_score():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, L, D, generator=g)
    pan = torch.stack([x[0].roll(t, dims=0) for t in range(10)])  # content never returns to a position
    assert brief_scores(pan, 2).max() < 0.5
    # every frame differs from every other (at a tower's width: chance cosines of 16-d noise reach +-0.5)
    texture = torch.randn(1, L, 512, generator=g) + 2 * torch.randn(10, L, 512, generator=g)
    assert brief_scores(texture, 2).max() < 0.5
    still = x[:1].expand(10, L, D).clone()
    stay = still.clone()
    stay[3:7, 4] = -still[0, 4]  # an object that stays four frames is not brief for brief_frames = 2
    assert brief_scores(stay, 2).max() < 0.5
    assert brief_scores(stay, 4)[3, 4] > 1.5
    assert torch.isinf(brief_scores(x[:2], 2)).all()  # two frames: nothing is brief


def test_at_the_ends_a_late_change_looks_brief():
    # Without a frame after, a change in the last frame cannot be told from a one-frame event; it is kept
    # (at most a frame's budget more), documented in docs/method.md.
    still = torch.randn(1, L, D, generator=torch.Generator().manual_seed(2)).expand(6, L, D).clone()
    still[5, 4] = -still[0, 4]
    assert brief_scores(still, 2)[5, 4] > 1.5
    still[4, 4] = -still[0, 4]  # two frames at the end: frames 1-3 alike stand in for the frame after
    assert brief_scores(still, 2)[4, 4] > 1.5 and brief_scores(still, 1)[4:, 4].max() < 0.5


def test_brief_tokens_thresholds_and_caps_per_frame():
    score = torch.tensor([[0.9, 0.6, 0.1], [0.2, 0.3, 0.4], [float("-inf"), 0.7, 0.8]])
    assert brief_tokens(score, 0.5, 3).tolist() == [0, 1, 7, 8]
    assert brief_tokens(score, 0.5, 1).tolist() == [0, 8]
    assert brief_tokens(score, 0.5, 0).tolist() == []


@pytest.mark.parametrize("seed", range(4))
def test_release_merges_the_most_salient_brief_object_into_a_texture_anchor(seed):
    # the mechanism of issue 27 in miniature: one token per frame is a density vote (DPC-kNN), which the far,
    # lone object loses, although it is its frame's most salient token
    out = prune_video_tokens(video(seed), TangoConfig(retention=0.1, segment="none"))
    assert out.info["static_positions"] == [5]
    assert not kept_as_itself(out, 3 * L + 9)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("object_saliency", [1.0, 0.01])
def test_brief_frames_keeps_the_object_and_adds_only_it(seed, object_saliency):
    vt = video(seed, object_saliency=object_saliency)
    ref = prune_video_tokens(vt, TangoConfig(retention=0.1, segment="none"))
    assert not kept_as_itself(ref, 3 * L + 9)  # the release loses it (the density vote)
    # found by its features alone: with saliency 0.01 the tower looked elsewhere
    out = prune_video_tokens(vt, TangoConfig(retention=0.1, segment="none", brief_frames=2))
    assert kept_as_itself(out, 3 * L + 9)
    assert out.num_kept == ref.num_kept + 1 and out.info["brief_added"] == 1
    # everything the release kept is still there, with the release's features
    rows = torch.searchsorted(out.index, ref.index)
    assert torch.equal(out.index[rows], ref.index) and torch.equal(out.features[rows], ref.features)
    assert torch.equal(out.index, torch.sort(out.index).values)
    assert out.assignment[3 * L + 9] == int(torch.searchsorted(out.index, torch.tensor(3 * L + 9)))
    assert (out.assignment[out.index] == torch.arange(out.num_kept)).all()  # kept tokens stand for themselves


def test_exact_budget_stays_exact_and_keeps_the_object():
    vt = video(2)
    ref = prune_video_tokens(vt, TangoConfig(retention=0.1, segment="none", budget="exact"))
    out = prune_video_tokens(vt, TangoConfig(retention=0.1, segment="none", budget="exact", brief_frames=2))
    assert out.num_kept == ref.num_kept == round(0.1 * T * L)
    assert kept_as_itself(out, 3 * L + 9)


@pytest.mark.parametrize("object_saliency", [1.0, 0.01])
def test_the_vllm_plugins_pruner_keeps_the_object_at_the_reserved_count(object_saliency):
    from tango_prune.integrations.vllm.settings import Settings, make_pruner

    # the plugin's pruner always returns the reserved count (settings._fit cuts or fills to it), so counting its
    # output proves nothing; what can fail is that Tango itself (the exact budget the plugin forces) lands on that
    # count with the object among its tokens: a fit would cut by saliency and drop a low-saliency object first
    out = make_pruner(Settings("tango", {"brief_frames": 1}), 0.1)(video(3, object_saliency=object_saliency))
    assert "budget_fit" not in out.info, out.info["budget_fit"]
    assert kept_as_itself(out, 3 * L + 9)


def test_sinks_are_never_brief_and_off_is_the_release():
    vt = video(0)
    out = prune_video_tokens(vt, TangoConfig(retention=0.1, segment="none", brief_frames=2, sink_indices=(9,)))
    assert out.info["brief_added"] == 0
    a = prune_video_tokens(vt, TangoConfig(retention=0.1))
    b = prune_video_tokens(vt, TangoConfig(retention=0.1, brief_frames=0, brief_tau=0.1))
    assert torch.equal(a.index, b.index) and torch.equal(a.features, b.features) and b.info["brief_added"] == 0
    assert TangoConfig.release().brief_frames == 0


@pytest.mark.parametrize("bad, msg", [(-1, "brief_frames must be"), (1.5, "brief_frames must be"), (True, "brief_frames")])
def test_bad_brief_frames_fail(bad, msg):
    with pytest.raises(ValueError, match=msg):
        TangoConfig(brief_frames=bad)


@pytest.mark.parametrize("bad", [3.0, -2.5, float("nan"), "0.5", False])
def test_bad_brief_tau_fails(bad):
    with pytest.raises(ValueError, match="brief_tau must be"):
        TangoConfig(brief_tau=bad)
