"""Behaviour of the Tango pipeline that users rely on, pinned on hand-made inputs."""
import math

import torch

from tango_prune import TangoConfig, VideoTokens, prune_video_tokens
from tango_prune.core.saliency import auto_sinks
from tango_prune.core.segment import consecutive_similarity, holitom_segments
from tango_prune.core.strope import default_section


def still_video(T=4, H=2, W=5, D=16, n_static=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = H * W
    f = torch.randn(T, L, D, generator=g)
    f[:, :n_static] = torch.randn(1, n_static, D, generator=g)  # identical in every frame
    return VideoTokens(f, torch.rand(T, L, generator=g), (T, H, W))


def test_default_section_splits_like_the_release():
    assert default_section(3584) == (1196, 1194, 1194)
    assert default_section(96) == (32, 32, 32)
    assert sum(default_section(130)) == 130


def test_release_rounding_can_exceed_budget_plus_one_per_segment():
    # 4 frames x 10 positions, 8 static: r' = 0.25; static part ceil(8 * .25) = 2, dynamic 4 x ceil(2 * .25) = 4.
    vt = still_video()
    out = prune_video_tokens(vt, TangoConfig(retention=0.1, segment="none"))
    assert out.segments == [4] and out.info["static_positions"] == [8]
    assert out.num_kept == 6 > round(0.1 * 40) + len(out.segments)
    exact = prune_video_tokens(vt, TangoConfig(retention=0.1, segment="none", budget="exact"))
    assert exact.num_kept == 4


def test_exact_budget_spends_what_a_static_video_leaves():
    T, L = 16, 36
    f = torch.randn(1, L, 32).expand(T, L, 32).clone()
    vt = VideoTokens(f, torch.rand(T, L), (T, 6, 6))
    ref = prune_video_tokens(vt, TangoConfig(retention=0.25))
    assert ref.num_kept == L  # r' = min(0.25 * 16, 1): the release keeps one frame's worth
    exact = prune_video_tokens(vt, TangoConfig(retention=0.25, budget="exact"))
    assert exact.num_kept == round(0.25 * T * L) == 144
    assert set(ref.index.tolist()) <= set(exact.index.tolist())


def test_static_positions_collapse_to_their_mean():
    vt = still_video(T=4, n_static=8)
    out = prune_video_tokens(vt, TangoConfig(retention=1.0 - 1e-9, segment="none"))
    L = 10
    static_rows = (out.index < 8).nonzero().flatten()  # frame 0, static positions
    assert static_rows.numel() == 8 and out.merged[static_rows].all()
    mean = vt.features[:, :8].mean(dim=0)
    torch.testing.assert_close(out.features[static_rows], mean)
    # Every frame's copy of a static position is represented by the frame-0 token.
    a = out.assignment.view(4, L)[:, :8]
    assert torch.equal(a, a[:1].expand(4, -1))


def test_merged_anchor_is_weighted_mean_of_its_members():
    g = torch.Generator().manual_seed(3)
    vt = VideoTokens(torch.randn(6, 49, 24, generator=g), torch.rand(6, 49, generator=g), (6, 7, 7))
    out = prune_video_tokens(vt, TangoConfig(retention=0.1, static_merge=False, segment="none"))
    flat = vt.features.reshape(-1, 24)
    checked = 0
    for row in out.merged.nonzero().flatten().tolist():
        members = (out.assignment == row).nonzero().flatten()
        c = members.numel()
        w = max(0.6, 1.0 / c)
        want = w * flat[out.index[row]] + (1 - w) * flat[members].mean(0)
        torch.testing.assert_close(out.features[row], want, atol=1e-5, rtol=1e-5)
        checked += 1
    assert checked > 0


def test_release_placement_permutes_anchor_features_only():
    g = torch.Generator().manual_seed(5)
    vt = VideoTokens(torch.randn(4, 64, 32, generator=g), torch.rand(4, 64, generator=g), (4, 8, 8))
    ours = prune_video_tokens(vt, TangoConfig(retention=0.2, segment="none", static_merge=False))
    rel = prune_video_tokens(vt, TangoConfig.release(retention=0.2, segment="none", static_merge=False))
    assert torch.equal(ours.index, rel.index)
    moved = ~torch.isclose(ours.features, rel.features).all(1)
    assert moved.any(), "the release's placement should move some merged features"
    # Same multiset of rows: sort rows lexicographically by their first channel.
    a = ours.features[moved][ours.features[moved][:, 0].argsort()]
    b = rel.features[moved][rel.features[moved][:, 0].argsort()]
    torch.testing.assert_close(a, b)


def test_diverse_selection_covers_every_saliency_mode():
    H = W = 12
    L = H * W
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    bump = lambda cy, cx, s, w: s * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2).float() / w)  # noqa: E731
    # 13 tokens of the broad first mode outrank the second mode's peak: top-10 never reaches it,
    # but the alpha-widened candidate set (15) does.
    sal = (bump(2, 2, 1.0, 4.0) + bump(9, 9, 0.35, 2.0)).flatten().unsqueeze(0)
    # Features vary smoothly in space, so the two bumps are far apart in ST-RoPE geometry too.
    g = torch.Generator().manual_seed(0)
    feats = torch.stack([yy.flatten().float(), xx.flatten().float()], -1) @ torch.randn(2, 32, generator=g)
    feats = feats + torch.randn(L, 32, generator=g) * 0.1
    vt = VideoTokens(feats.unsqueeze(0), sal, (1, H, W))
    cfg = TangoConfig(retention=10 / L, context_ratio=0.0)
    near_second = lambda out: int(((out.positions[:, 1] - 9).abs() + (out.positions[:, 2] - 9).abs() <= 3).sum())  # noqa: E731
    assert near_second(prune_video_tokens(vt, cfg.replace(selection="topk"))) == 0
    assert near_second(prune_video_tokens(vt, cfg)) >= 1


def test_feature_saliency_fallback_is_reported():
    vt = VideoTokens(torch.randn(3, 16, 8), None, (3, 4, 4))
    out = prune_video_tokens(vt, TangoConfig(retention=0.25))
    assert out.info["saliency"] == "feature-distinctiveness"
    out2 = prune_video_tokens(VideoTokens(vt.features, torch.rand(3, 16), (3, 4, 4)), TangoConfig(retention=0.25))
    assert out2.info["saliency"] == "given"


def test_auto_sinks_find_planted_outliers():
    g = torch.Generator().manual_seed(0)
    sal = torch.rand(8, 196, generator=g)
    sal[:, [11, 169]] = 40.0
    sal[3, 50] = 40.0  # a one-frame peak is content, not a sink
    assert auto_sinks(sal) == [11, 169]
    out = prune_video_tokens(VideoTokens(torch.randn(8, 196, 12), sal, (8, 14, 14)), TangoConfig(sink_indices="auto"))
    assert out.info["sinks"] == [11, 169]


def test_named_sinks_and_masking():
    vt = VideoTokens(torch.randn(2, 196, 12), torch.rand(2, 196), (2, 14, 14))
    out = prune_video_tokens(vt, TangoConfig(sink_indices="llava-ov"))
    assert out.info["sinks"] == [11, 12, 27, 28, 41, 169]


def test_holitom_extremes():
    assert holitom_segments(torch.zeros(5, 7), 0.5) == [1] * 6  # nothing static: single frames
    assert holitom_segments(torch.ones(5, 7), 0.5) == [6]  # all static: one segment
    assert holitom_segments(torch.ones(5, 7), 0.5, max_window=4) == [4, 2]


def test_consecutive_similarity_chunking():
    f = torch.randn(37, 9, 5)
    a, n = consecutive_similarity(f, frames_per_chunk=4)
    torch.testing.assert_close(n, f.norm(dim=-1))
    b = torch.nn.functional.cosine_similarity(f[:-1], f[1:], dim=-1)
    torch.testing.assert_close(a, b)


def test_small_blocks_give_the_same_result():
    g = torch.Generator().manual_seed(1)
    vt = VideoTokens(torch.randn(6, 36, 16, generator=g), torch.rand(6, 36, generator=g), (6, 6, 6))
    a = prune_video_tokens(vt, TangoConfig(retention=0.2, segment="none"))
    b = prune_video_tokens(vt, TangoConfig(retention=0.2, segment="none", block_tokens=7))
    assert torch.equal(a.index, b.index)
    torch.testing.assert_close(a.features, b.features)


def test_bfloat16_in_bfloat16_out():
    vt = VideoTokens(torch.randn(4, 49, 16).bfloat16(), torch.rand(4, 49), (4, 7, 7))
    out = prune_video_tokens(vt, TangoConfig())
    assert out.features.dtype == torch.bfloat16
    assert math.isclose(out.num_kept / (4 * 49), 0.1, abs_tol=0.15)
