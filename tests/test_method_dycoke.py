"""DyCoke TTM: which frames are compared, redundant positions dropped, the budget fallback."""
import pytest
import torch

import tango_prune.methods.dycoke  # noqa: F401  (registers "dycoke")
from tango_prune import VideoTokens, get_method
from tango_prune.core.budget import exact_count

from .test_properties import check_valid

L, D = 16, 8


def kept_positions(out, t):
    return set((out.index[out.positions[:, 0] == t] - t * L).tolist())


def window(changes, seed=0):
    """Four frames: f1 = f0 and f2 = f0 except at changes[1] / changes[2]; f3 = f2 except at changes[3]."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(1, L, D, generator=g).repeat(4, 1, 1)
    for t in (1, 2, 3):
        if t == 3:
            f[3] = f[2]
        pos = torch.tensor(sorted(changes[t]))
        f[t, pos] = torch.randn(len(pos), D, generator=g)
    return f


def test_repeated_positions_are_pruned_changed_ones_kept():
    changes = {1: {0, 5, 9, 14}, 2: {2, 3, 7, 11}, 3: {1, 6, 12, 15}}
    vt = VideoTokens(window(changes), None, (4, 4, 4))
    out = get_method("dycoke")(retention=1.0, k=0.75)(vt)  # compared frames keep int(0.25 * 16) = 4
    assert kept_positions(out, 0) == set(range(L))  # the reference frame stays whole
    for t in (1, 2, 3):  # f3 differs from f0 at 8 positions but is compared with f2, so only its own 4 count
        assert kept_positions(out, t) == changes[t]
    # a dropped repeat is represented by the token at its position in the reference frame, if kept
    row = {int(i): r for r, i in enumerate(out.index.tolist())}
    for t, ref in ((1, 0), (2, 0)):
        for p in set(range(L)) - changes[t]:
            assert int(out.assignment[t * L + p]) == row[ref * L + p]
    for p in set(range(L)) - changes[3]:
        want = row.get(2 * L + p, -1)
        assert int(out.assignment[3 * L + p]) == want
    assert not out.merged.any() and out.info["saliency"] == "unused"
    assert out.segments == [4]


def test_scaled_to_the_budget_references_keep_their_most_salient():
    g = torch.Generator().manual_seed(1)
    T = 10
    vt = VideoTokens(torch.randn(T, L, D, generator=g), torch.rand(T, L, generator=g), (T, 4, 4))
    out = get_method("dycoke")(retention=0.1)(vt)  # TTM would keep 3 * 16 + 7 * 4 = 76 > 16
    check_valid(vt, out)
    assert out.num_kept == exact_count(0.1, T * L) and out.info["scaled_to_budget"]
    assert out.info["ttm_count"] == 76 and out.segments == [4, 4, 2]
    for t in (0, 4, 8):
        n = len(kept_positions(out, t))
        assert kept_positions(out, t) == set(torch.topk(vt.saliency[t], n).indices.tolist())


@pytest.mark.parametrize("r", [0.001, 0.1, 0.3, 0.6, 1.0])
def test_never_above_the_budget(r):
    g = torch.Generator().manual_seed(2)
    vt = VideoTokens(torch.randn(7, L, D, generator=g), None, (7, 4, 4))
    out = get_method("dycoke")(retention=r)(vt)
    check_valid(vt, out)
    assert 1 <= out.num_kept <= exact_count(r, 7 * L)


def test_k_must_be_a_rate():  # unknown options and bad retentions: test_methods.test_bad_options_are_rejected
    with pytest.raises(ValueError, match=r"k \(pruning rate of the compared frames\) must be in \[0, 1\], got 1.5"):
        get_method("dycoke")(retention=0.1, k=1.5)


def test_without_saliency_and_in_bfloat16():
    g = torch.Generator().manual_seed(3)
    vt = VideoTokens(torch.randn(9, L, D, generator=g).bfloat16(), None, (9, 4, 4))
    out = get_method("dycoke")(retention=0.1)(vt)
    check_valid(vt, out)
    assert out.info["saliency"] == "feature-distinctiveness" and out.features.dtype == torch.bfloat16
