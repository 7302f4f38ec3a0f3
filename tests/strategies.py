"""Hypothesis strategies for whole videos of tokens."""
import torch
from hypothesis import strategies as st

from tango_prune import VideoTokens


@st.composite
def videos(draw, max_frames=64, max_side=16, max_dim=128, dtypes=(torch.float32,)):
    T = draw(st.integers(1, max_frames))
    H = draw(st.integers(1, max_side))
    W = draw(st.integers(1, max_side))
    D = draw(st.integers(3, max_dim))
    seed = draw(st.integers(0, 2**31 - 1))
    dtype = draw(st.sampled_from(dtypes))
    g = torch.Generator().manual_seed(seed)
    L = H * W
    feats = torch.randn(T, L, D, generator=g)
    # Some videos hold still, so the static/dynamic split and long segments get exercised.
    if draw(st.booleans()):
        base = torch.randn(1, L, D, generator=g)
        still = torch.rand(1, L, 1, generator=g) < draw(st.floats(0.0, 1.0))
        feats = torch.where(still, base + 0.05 * feats, feats)
    sal = torch.rand(T, L, generator=g) if draw(st.booleans()) else None
    ts = torch.cumsum(torch.rand(T, generator=g) + 0.1, 0) if draw(st.booleans()) else None
    return VideoTokens(feats.to(dtype), None if sal is None else sal, (T, H, W), ts)


retentions = st.floats(min_value=1e-3, max_value=1.0, exclude_min=False)
