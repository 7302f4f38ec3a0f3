"""FastVID: DySeg cuts, ATS keeps the saliency top, DTM's anchor frames and merge rule, exact budget."""
import pytest
import torch

import tango_prune.methods.fastvid  # noqa: F401  (registers "fastvid")
from tango_prune import VideoTokens, get_method
from tango_prune.core.budget import exact_count

from .test_properties import check_valid


def scenes(lengths, L=36, D=16, noise=0.05, seed=0):
    """Frames of one scene share a base (plus noise); a new scene starts from an unrelated base."""
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randn(1, L, D, generator=g) + noise * torch.randn(n, L, D, generator=g) for n in lengths]
    f = torch.cat(parts)
    T = f.shape[0]
    return VideoTokens(f, torch.rand(T, L, generator=g), (T, 6, L // 6))


def test_cuts_at_the_lowest_similarity_boundaries():
    vt = scenes([4, 5, 3])
    # tau below any similarity: only the c - 1 lowest boundaries cut, which are the two scene changes
    assert get_method("fastvid")(retention=0.2, c=3, tau=-1.0)(vt).segments == [4, 5, 3]
    assert get_method("fastvid")(retention=0.2, c=2, tau=-1.0)(vt).segments in ([4, 8], [9, 3])
    # c = 1 asks for no cut, but both scene changes fall below tau
    assert get_method("fastvid")(retention=0.2, c=1, tau=0.9)(vt).segments == [4, 5, 3]
    assert get_method("fastvid")(retention=0.2, c=1, tau=-1.0)(vt).segments == [12]


def test_ats_keeps_each_frames_most_salient_tokens_unmerged():
    vt = scenes([6], seed=1)
    out = get_method("fastvid")(retention=10 / 36)(vt)  # 10 per frame: S = 10 - floor(0.4 * 10) = 6 salient
    assert out.info["salient_per_frame"] == 6
    for t in range(6):
        top = torch.topk(vt.saliency[t], 6).indices + t * 36
        rows = torch.searchsorted(out.index, top)
        assert torch.equal(out.index[rows], top) and not out.merged[rows].any()
        assert torch.equal(out.assignment[top], rows)


def test_dtm_anchors_sit_in_anchor_frames_and_merge_by_the_release_rule():
    vt = scenes([8], seed=2)
    out = get_method("fastvid")(retention=10 / 36, c=1, tau=-1.0)(vt)
    salient = torch.zeros(8 * 36, dtype=torch.bool)
    for t in range(8):
        salient[torch.topk(vt.saliency[t], 6).indices + t * 36] = True
    anchors = ~salient[out.index]
    # the segment's 8 * 4 context tokens sit in its last frame and every p = 4th before it: frames 3 and 7
    assert set(out.positions[anchors, 0].tolist()) == {3, 7} and int(anchors.sum()) == 32

    # p = 8: one anchor frame, frame 7, holding all 8 * 2 context tokens (5 per frame, S = 3)
    one = get_method("fastvid")(retention=5 / 36, c=1, tau=-1.0, p=8)(vt)
    salient = torch.zeros(8 * 36, dtype=torch.bool)
    for t in range(8):
        salient[torch.topk(vt.saliency[t], 3).indices + t * 36] = True
    X = vt.features.reshape(-1, 16)
    rows = (~salient[one.index]).nonzero().flatten()
    assert set(one.positions[rows, 0].tolist()) == {7} and one.merged[rows].any()
    for row in rows[one.merged[rows]].tolist():
        members = (one.assignment == row).nonzero().flatten()
        assert members.numel() > 1 and not salient[members].any()
        expect = 0.6 * X[one.index[row]] + 0.4 * X[members].mean(dim=0)  # w = max(beta, 1 / (c + 1)) = 0.6
        assert torch.allclose(one.features[row], expect, atol=1e-5)


@pytest.mark.parametrize("r", [0.01, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_keeps_exactly_the_budget(r):
    vt = scenes([3, 1, 7], seed=3)
    out = get_method("fastvid")(retention=r)(vt)
    check_valid(vt, out)
    assert out.num_kept == exact_count(r, 11 * 36)


def test_k_needs_two_neighbours():  # unknown options and bad retentions: test_methods.test_bad_options_are_rejected
    with pytest.raises(ValueError, match="k >= 2, got c=8, p=4, k=1"):
        get_method("fastvid")(retention=0.1, k=1)


def test_without_saliency_and_in_bfloat16():
    vt = scenes([5, 4], seed=4)
    plain = VideoTokens(vt.features.bfloat16(), None, vt.grid)
    out = get_method("fastvid")(retention=0.15)(plain)
    check_valid(plain, out)
    assert out.info["saliency"] == "feature-distinctiveness"
    assert out.features.dtype == torch.bfloat16 and out.num_kept == exact_count(0.15, 9 * 36)
    assert get_method("fastvid")(retention=0.15)(vt).info["saliency"] == "given"
