"""Invariants every Tango output must hold, on hypothesis-generated videos."""
import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tango_prune import TangoConfig, prune_video_tokens

from .strategies import retentions, videos

SETTINGS = dict(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def config(vt, retention, **kw):
    D = vt.features.shape[-1]
    return TangoConfig(retention=retention, strope=D % 2 == 0, **kw)


def check_valid(vt, out):
    T, L, D = vt.features.shape
    idx = out.index
    assert idx.dtype == torch.int64 and idx.dim() == 1
    assert idx.numel() >= 1
    assert torch.all(idx[1:] > idx[:-1]), "indices must be unique and sorted"
    assert int(idx.min()) >= 0 and int(idx.max()) < T * L
    _, H, W = vt.grid
    t, h, w = out.positions.unbind(-1)
    assert torch.equal(t * L + h * W + w, idx)
    assert out.positions.dtype == torch.int64
    assert out.features.shape == (idx.numel(), D)
    assert out.features.dtype == vt.features.dtype and out.features.device == vt.features.device
    assert torch.isfinite(out.features.float()).all()
    assert sum(out.segments) == T and min(out.segments) >= 1
    flat = vt.features.reshape(T * L, D)
    plain = ~out.merged
    assert torch.equal(out.features[plain], flat[idx[plain]]), "unmerged kept tokens must carry their input features"
    a = out.assignment
    assert a.shape == (T * L,) and int(a.min()) >= -1 and int(a.max()) < idx.numel()
    assert torch.equal(a[idx][plain], torch.arange(idx.numel())[plain]), "a plain kept token represents itself"


@settings(**SETTINGS)
@given(videos(dtypes=(torch.float32, torch.bfloat16, torch.float64)), retentions)
def test_reference_output_is_valid(vt, r):
    check_valid(vt, prune_video_tokens(vt, config(vt, r)))


@settings(**SETTINGS)
@given(videos(), retentions, st.sampled_from(["holitom", "fastvid", "none"]))
def test_reference_count_bound(vt, r, segment):
    """The release rounds up once per frame and part: K <= r*T*L + T + #segments, and K >= #segments."""
    out = prune_video_tokens(vt, config(vt, r, segment=segment))
    T, L, _ = vt.features.shape
    assert out.num_kept <= math.floor(r * T * L) + T + len(out.segments)
    assert out.num_kept >= len(out.segments)


@settings(**SETTINGS)
@given(videos(dtypes=(torch.float32, torch.bfloat16)), retentions)
def test_exact_mode_keeps_exactly_the_budget(vt, r):
    out = prune_video_tokens(vt, config(vt, r, budget="exact"))
    T, L, _ = vt.features.shape
    assert out.num_kept == max(1, round(r * T * L))
    check_valid(vt, out)


@settings(**SETTINGS)
@given(videos(), retentions, st.sampled_from(["exact", "fast"]))
def test_deterministic(vt, r, similarity):
    cfg = config(vt, r, similarity=similarity)
    a, b = prune_video_tokens(vt, cfg), prune_video_tokens(vt, cfg)
    assert torch.equal(a.index, b.index) and torch.equal(a.features, b.features)
    assert torch.equal(a.assignment, b.assignment)


@settings(**SETTINGS)
@given(videos(dtypes=(torch.float32, torch.bfloat16)), st.sampled_from(["reference", "exact"]))
def test_full_retention_is_identity(vt, budget):
    out = prune_video_tokens(vt, config(vt, 1.0, budget=budget))
    T, L, D = vt.features.shape
    assert torch.equal(out.index, torch.arange(T * L))
    assert torch.equal(out.features, vt.features.reshape(T * L, D))
    assert not out.merged.any()


@settings(**SETTINGS)
@given(videos(max_frames=12), retentions)
def test_fast_similarity_output_is_valid(vt, r):
    check_valid(vt, prune_video_tokens(vt, config(vt, r, similarity="fast")))
