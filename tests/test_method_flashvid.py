"""FlashVID: equals the authors' release on stored vectors (budget="release"), the exact budget, ADTS's first pick,
TSTM's trees and the release's tree feature rule, options."""
from pathlib import Path

import pytest
import torch

from tango_prune import VideoTokens, get_method
from tango_prune.core.budget import exact_count

from .test_properties import check_valid

VECTORS = Path(__file__).resolve().parent / "data" / "flashvid_vectors.pt"


def scenes(lengths, L=36, D=16, noise=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = torch.cat([torch.randn(1, L, D, generator=g) + noise * torch.randn(n, L, D, generator=g) for n in lengths])
    return VideoTokens(f + 1.0, torch.rand(f.shape[0], L, generator=g), (f.shape[0], 6, L // 6))


def test_equals_the_release_on_its_own_function():
    """scripts/measure/flashvid_vectors.py ran flashvid/utils.py flashvid_compression (density noise zeroed)."""
    cases = torch.load(VECTORS, weights_only=False)["cases"]
    matched = 0
    for c in cases:
        vt = VideoTokens(c["features"].float(), c["saliency"].float(), tuple(c["grid"]))
        out = get_method("flashvid")(retention=c["retention"], **c["options"])(vt)
        check_valid(vt, out)
        assert out.segments == c["segments"], c["name"]
        same = torch.equal(out.index, c["index"].long())
        matched += same
        if same:
            assert torch.allclose(out.features, c["tokens"], atol=1e-5, rtol=1e-5), c["name"]
    assert len(cases) == 8 and matched == 8, f"{matched} of {len(cases)} cases equal the release"


@pytest.mark.parametrize("r", [0.01, 0.1, 0.25, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("selection", ["attn_div_v2", "attn_div"])
def test_exact_budget(r, selection):
    vt = scenes([3, 1, 5], seed=3)
    out = get_method("flashvid")(retention=r, selection=selection)(vt)
    check_valid(vt, out)
    assert out.num_kept == exact_count(r, 9 * 36)


def test_first_adts_pick_is_the_most_isolated_weighted_token():
    """alpha=1, one token per frame (attn_div): argmax_j w_j * min_{i != j} (1 - cos(x_i, x_j))."""
    vt = scenes([4], seed=5)
    out = get_method("flashvid")(retention=1 / 36, alpha=1.0, selection="attn_div", do_segment=False)(vt)
    for t in range(4):
        x = torch.nn.functional.normalize(vt.features[t], dim=-1)
        d = (1 - x @ x.T).fill_diagonal_(float("inf")) * vt.saliency[t][None, :]
        assert out.index[t].item() == t * 36 + int(d.min(dim=0).values.argmax())
    assert not out.merged.any()


def test_a_still_video_collapses_into_its_first_frame():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(1, 16, 12, generator=g).repeat(6, 1, 1) + 1e-3 * torch.randn(6, 16, 12, generator=g)
    vt = VideoTokens(f, torch.rand(6, 16, generator=g), (6, 4, 4))
    out = get_method("flashvid")(retention=0.1, alpha=0.0, do_segment=False)(vt)  # 10 context tokens, 16 roots
    assert out.num_kept == 10 and set(out.positions[:, 0].tolist()) == {0}
    assert (out.assignment >= 0).all()  # every token is represented
    assert out.info["roots"] == 16


def test_tree_feature_is_sum_over_one_plus_direct_children():
    """Chain a -> a' -> a'' (frames 0, 1, 2): the root carries (a + a' + a'') / 2, the release's in-place rule."""
    a, b = torch.eye(4)[0] * 2, torch.eye(4)[1] * 3
    f = torch.stack([torch.stack([a, b]), torch.stack([a * 1.1, b * 0.9]), torch.stack([a * 0.8, b * 1.2])])
    vt = VideoTokens(f, torch.ones(3, 2), (3, 1, 2))
    out = get_method("flashvid")(retention=2 / 6, alpha=0.0, do_segment=False)(vt)  # 2 roots, 2 context tokens
    assert out.index.tolist() == [0, 1] and out.merged.all()
    assert torch.allclose(out.features[0], (a + 1.1 * a + 0.8 * a) / 2)
    assert torch.allclose(out.features[1], (b + 0.9 * b + 1.2 * b) / 2)
    assert out.assignment.tolist() == [0, 1] * 3


def test_release_budget_rounds_up_per_frame():
    vt = scenes([4, 4], seed=6)
    out = get_method("flashvid")(retention=0.1, budget="release")(vt)  # b = ceil(3.6) = 4 per frame, a = 3
    assert out.info["adts_tokens"] == 8 * 3 and 32 <= out.num_kept <= 32 + 8
    assert not get_method("flashvid")(retention=0.1, budget="release").exact_budget


def test_options_are_validated():
    make = get_method("flashvid")
    for opts, word in [(dict(alpha=1.5), "alpha"), (dict(temporal_threshold=1.0), "temporal_threshold"),
                       (dict(selection="attn"), "selection"), (dict(budget="ceil"), "budget"),
                       (dict(min_segments=0), "min_segments"), (dict(tau=0.9), "valid: retention, alpha")]:
        with pytest.raises(ValueError, match=word):
            make(retention=0.1, **opts)


def test_without_saliency_and_in_bfloat16():
    vt = scenes([5, 4], seed=4)
    plain = VideoTokens(vt.features.bfloat16(), None, vt.grid)
    out = get_method("flashvid")(retention=0.15)(plain)
    check_valid(plain, out)
    assert out.info["saliency"] == "feature-distinctiveness" and out.features.dtype == torch.bfloat16
    assert out.num_kept == exact_count(0.15, 9 * 36)
