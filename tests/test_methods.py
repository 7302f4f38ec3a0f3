"""Every registered method: valid output, its budget, determinism, on golden and generated inputs;
then one test per method pinning what defines it."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tango_prune import TangoConfig, VideoTokens, get_method, list_methods, prune_video_tokens
from tango_prune.core.budget import exact_count

from .conftest import golden_dir, load_golden
from .strategies import retentions, videos
from .test_properties import SETTINGS, check_valid

PEERS = ["none", "uniform", "random", "topk", "visionzip", "divprune", "fastvid", "holitom", "dycoke", "tango", "flashvid",
         "vidcom2", "evs"]



def test_registry_holds_every_peer():
    assert set(PEERS) <= set(list_methods())
    for name in list_methods():
        doc = get_method(name).__doc__ or ""
        assert len(doc) > 80, f"{name} must document how it works, its parameters and its source"


def check_budget(name, vt, r, out):
    N = vt.num_tokens
    if name == "none":
        assert out.num_kept == N
    elif name == "evs":  # vLLM's count by default: at least one whole frame
        assert out.num_kept == max(vt.grid[1] * vt.grid[2], int(r * N))
    elif getattr(get_method(name), "exact_budget", False):
        assert out.num_kept == exact_count(r, N)
    else:  # methods that round up per frame and segment part, as their releases do
        assert 1 <= out.num_kept <= math.floor(r * N) + vt.grid[0] + len(out.segments)


def build(name, r, vt):
    opts = {}
    if name == "tango" and vt.features.shape[-1] % 2:
        opts["strope"] = False  # ST-RoPE needs an even channel count
    return get_method(name)(retention=r, **opts)


@pytest.mark.parametrize("name", sorted(set(PEERS) & set(list_methods())))
@settings(**{**SETTINGS, "max_examples": 20})
@given(vt=videos(max_frames=24, max_side=12, max_dim=48, dtypes=(torch.float32, torch.bfloat16)), r=retentions)
def test_valid_within_budget_and_deterministic(name, vt, r):
    pruner = build(name, r, vt)
    out = pruner(vt)
    check_valid(vt, out)
    check_budget(name, vt, r, out)
    again = pruner(vt)
    assert torch.equal(out.index, again.index) and torch.equal(out.features, again.features)
    if vt.saliency is None and name in ("topk", "visionzip", "holitom", "tango", "fastvid", "flashvid"):
        assert out.info.get("saliency") == "feature-distinctiveness"


@pytest.mark.parametrize("name", sorted(set(PEERS) & set(list_methods())))
def test_on_golden_inputs(name):
    for f in sorted(golden_dir().glob("ov_*.pt")):
        d = load_golden(f.name)["inputs"]
        vt = VideoTokens(d["features"], d["saliency"], tuple(d["grid"]), d["timestamps"])
        for r in (0.1, 0.2):
            out = build(name, r, vt)(vt)
            check_valid(vt, out)
            check_budget(name, vt, r, out)


@pytest.mark.parametrize("name", sorted(set(PEERS) & set(list_methods()) - {"none"}))
def test_bad_options_are_rejected(name):
    for r in (1.5, 0.0):
        with pytest.raises(ValueError, match="retention"):
            get_method(name)(retention=r)
    with pytest.raises(ValueError, match=r"no_such_option.*valid: \[?'?retention"):  # names the option and the valid ones
        get_method(name)(retention=0.1, no_such_option=3)


# --- what defines each simple method ---------------------------------------------------------------

def test_uniform_keeps_an_even_subgrid():
    vt = VideoTokens(torch.randn(2, 36, 8), None, (2, 6, 6))
    out = get_method("uniform")(retention=0.25)(vt)  # 9 per frame: a 3x3 grid, rows/cols 1, 3, 5
    assert out.num_kept == 18
    for t in range(2):
        p = out.positions[out.positions[:, 0] == t]
        assert sorted(set(p[:, 1].tolist())) == [1, 3, 5] and sorted(set(p[:, 2].tolist())) == [1, 3, 5]


def test_random_depends_on_seed_only():
    vt = VideoTokens(torch.randn(4, 25, 8), torch.rand(4, 25), (4, 5, 5))
    a, b = get_method("random")(retention=0.2, seed=1), get_method("random")(retention=0.2, seed=2)
    torch.manual_seed(0)
    x = a(vt).index
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(x, a(vt).index) and not torch.equal(x, b(vt).index)


def test_topk_keeps_each_frames_most_salient():
    sal = torch.rand(3, 16)
    vt = VideoTokens(torch.randn(3, 16, 8), sal, (3, 4, 4))
    out = get_method("topk")(retention=0.25)(vt)
    for t in range(3):
        kept = (out.index[out.positions[:, 0] == t] - t * 16).sort().values
        assert torch.equal(kept, torch.topk(sal[t], 4).indices.sort().values)


# --- holitom ----------------------------------------------------------------------------------------

def still_then_cut(T1=4, T2=3, L=16, D=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(1, L, D, generator=g), torch.randn(1, L, D, generator=g)
    f = torch.cat([a.expand(T1, -1, -1), b.expand(T2, -1, -1)]).clone()
    f[:, :4] = torch.randn(T1 + T2, 4, D, generator=g)  # four positions always move
    return VideoTokens(f, torch.rand(T1 + T2, L, generator=g), (T1 + T2, 4, 4))


def test_holitom_segments_statics_and_raised_ratio():
    vt = still_then_cut()
    out = get_method("holitom")(retention=0.25)(vt)
    assert out.segments == [4, 3]
    assert out.info["static_positions"] == [12, 12]
    removed = 3 * 12 + 2 * 12
    assert out.info["raised_ratio"] == pytest.approx(0.25 * 112 / (112 - removed))
    # static tokens are placed in each segment's first frame and stand for the whole segment
    static_rows = out.merged & (out.positions[:, 1] * 4 + out.positions[:, 2] >= 4)
    assert set(out.positions[static_rows, 0].tolist()) <= {0, 4}


def test_holitom_dynamic_tokens_are_the_salient_ones_by_default():
    vt = still_then_cut()
    out = get_method("holitom")(retention=0.25)(vt)
    dyn = out.positions[:, 1] * 4 + out.positions[:, 2] < 4
    r = out.info["raised_ratio"]
    per_frame = math.ceil(4 * r)
    for t in range(7):
        kept = out.index[dyn & (out.positions[:, 0] == t)] - t * 16
        assert torch.equal(kept.sort().values, torch.topk(vt.saliency[t, :4], per_frame).indices.sort().values)
    assert not out.merged[dyn].any()


def test_holitom_exact_budget():
    vt = still_then_cut()
    assert get_method("holitom")(retention=0.3, budget="exact")(vt).num_kept == exact_count(0.3, 112)


# --- tango's ablation switches ------------------------------------------------------------------------

def test_strope_off_equals_strope_on_where_rotation_is_identity():
    """ST-RoPE rotates by (t, h, w); at coordinate 0 everywhere it is the identity, so both paths agree."""
    g = torch.Generator().manual_seed(0)
    vt = VideoTokens(torch.randn(6, 1, 24, generator=g), torch.rand(6, 1, generator=g), (6, 1, 1), torch.zeros(6))
    on, off = (prune_video_tokens(vt, TangoConfig(retention=0.5, strope=s, segment="none")) for s in (True, False))
    assert torch.equal(on.index, off.index) and torch.allclose(on.features, off.features)


def test_strope_with_vanishing_rotation_matches_strope_off():
    """RoPE's frequencies are base^(-2i/d): with astronomically large bases every channel pair but the first of each
    (t, h, w) group stops turning (base^0 = 1 always turns by the coordinate itself). So the geometry equals plain
    cosine except in three pairs, and where those pairs hold zeros the whole pipeline agrees with ST-RoPE off."""
    from tango_prune.core.strope import strope

    x = torch.randn(3, 4, 36)
    rows, cols = torch.tensor([0, 1, 2, 3]), torch.tensor([3, 2, 1, 0])
    y = strope(x, torch.tensor([0.0, 5.0, 9.0]), rows, cols, (12, 12, 12), 1e300, 1e300)
    first_pairs = torch.zeros(36, dtype=torch.bool)
    first_pairs[[0, 6, 12, 18, 24, 30]] = True
    assert torch.equal(y[..., ~first_pairs], x[..., ~first_pairs])
    g = torch.Generator().manual_seed(0)
    f = torch.randn(8, 36, 48, generator=g)
    f[..., [0, 8, 16, 24, 32, 40]] = 0  # the first pair of each 16-channel group: nothing left to turn
    vt = VideoTokens(f, torch.rand(8, 36, generator=g), (8, 6, 6))
    cfg = TangoConfig(retention=0.2, segment="none")
    off = prune_video_tokens(vt, cfg.replace(strope=False))
    huge = prune_video_tokens(vt, cfg.replace(base_time=1e300, base_space=1e300))
    normal = prune_video_tokens(vt, cfg)
    assert torch.equal(off.index, huge.index) and torch.allclose(off.features, huge.features, atol=1e-5)
    assert not torch.equal(off.index, normal.index)  # a turning rotation does change the result here


@pytest.mark.parametrize("switch", [dict(selection="topk"), dict(static_merge=False), dict(context_ratio=0.0),
                                    dict(alpha=1.0), dict(strope=False)])
def test_each_ablation_is_a_real_code_path(switch):
    vt = still_then_cut(T1=6, T2=6, L=16, D=24, seed=3)
    vt = VideoTokens(vt.features + 0.3 * torch.randn_like(vt.features), vt.saliency, vt.grid)
    base = prune_video_tokens(vt, TangoConfig(retention=0.3))
    out = prune_video_tokens(vt, TangoConfig(retention=0.3, **switch))
    check_valid(vt, out)
    assert not (torch.equal(base.index, out.index) and torch.equal(base.features, out.features)), switch


@given(st.integers(0, 5))
@settings(max_examples=6, deadline=None)
def test_context_ratio_zero_merges_nothing_dynamic(seed):
    g = torch.Generator().manual_seed(seed)
    vt = VideoTokens(torch.randn(4, 16, 12, generator=g), torch.rand(4, 16, generator=g), (4, 4, 4))
    out = prune_video_tokens(vt, TangoConfig(retention=0.25, context_ratio=0.0, static_merge=False))
    assert not out.merged.any()


def test_holitom_keeps_a_token_of_a_fully_static_video():
    """Found by hypothesis: at low retention the release's round() keeps nothing of an all-static segment."""
    vt = VideoTokens(torch.ones(2, 1, 3), None, (2, 1, 1))
    out = get_method("holitom")(retention=0.25)(vt)
    assert out.num_kept == 1 and out.merged.all() and (out.assignment == 0).all()
