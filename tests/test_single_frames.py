"""One-frame segments go through prune_frames in batches: the same tokens and features as one call per frame."""
import pytest
import torch

from tango_prune import TangoConfig, VideoTokens, prune_video_tokens
from tango_prune.bench.synthetic import noise_video
from tango_prune.core.strope import resolve_section
from tango_prune.core.tango import Geometry, Pieces, prune_segment, prune_single_frames


def _per_frame_and_batched(vt: VideoTokens, cfg: TangoConfig, batch: int):
    T, L, D = vt.features.shape
    geo = Geometry(vt.grid[2], resolve_section(D, None), cfg.base_time, cfg.base_space, True, torch.float32)
    norms = vt.features.float().norm(dim=-1)
    times = vt.times()
    one = Pieces(T * L, "cpu")
    for a in range(T):
        prune_segment(vt.features[a : a + 1], norms[a : a + 1], times[a : a + 1], vt.saliency[a : a + 1], None, 0,
                      a * L, cfg, geo, one)
    many = Pieces(T * L, "cpu")
    prune_single_frames(vt.features, norms, times, vt.saliency, list(range(T)), cfg, geo, many, batch=batch)
    return one.finish(), many.finish()


@pytest.mark.parametrize("retention,placement,batch", [(0.1, "anchor", 4), (0.25, "release", 3), (0.6, "anchor", 64)])
def test_batched_frames_equal_one_call_per_frame(retention, placement, batch):
    vt = noise_video(7, side=6, dim=48, dtype=torch.float32, noise=1.0)
    cfg = TangoConfig(retention=retention, merge_placement=placement)
    (i1, f1, m1, o1), (i2, f2, m2, o2) = _per_frame_and_batched(vt, cfg, batch)
    assert torch.equal(i1, i2) and torch.equal(m1, m2) and torch.equal(o1, o2)
    torch.testing.assert_close(f1, f2, rtol=1e-6, atol=1e-6)


def test_a_video_of_one_frame_segments():
    """No two frames alike: every segment is one frame, and the budget is still met frame by frame."""
    vt = noise_video(12, side=6, dim=48, dtype=torch.float32)
    out = prune_video_tokens(vt, TangoConfig(retention=0.25, budget="reference"))
    assert out.segments == [1] * 12
    assert out.num_kept == 12 * 9  # ceil(36 * 0.25) per frame
    frames = out.index // 36
    assert torch.equal(torch.bincount(frames, minlength=12), torch.full((12,), 9))
