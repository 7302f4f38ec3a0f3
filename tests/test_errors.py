"""Bad input fails early with a ValueError that names the argument and the fix."""
import pytest
import torch

from tango_prune import TangoConfig, VideoTokens, get_method, prune_video_tokens


def vt(T=2, H=2, W=3, D=12, **kw):
    args = dict(features=torch.randn(T, H * W, D), saliency=torch.rand(T, H * W), grid=(T, H, W))
    args.update(kw)
    return VideoTokens(**args)


@pytest.mark.parametrize("r", [0, 0.0, -0.1, 1.5, float("nan"), True, "0.1"])
def test_retention_out_of_range(r):
    with pytest.raises(ValueError, match="retention must be in \\(0, 1\\]"):
        TangoConfig(retention=r)


def test_retention_override_checked():
    with pytest.raises(ValueError, match="retention"):
        prune_video_tokens(vt(), retention=2.0)


def test_grid_mismatch():
    with pytest.raises(ValueError, match="H \\* W == L"):
        vt(grid=(2, 3, 3))


def test_saliency_shape():
    with pytest.raises(ValueError, match="saliency must have shape \\(T, L\\)"):
        vt(saliency=torch.rand(2, 5))


@pytest.mark.parametrize("field", ["features", "saliency"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite(field, bad):
    t = torch.randn(2, 6, 12) if field == "features" else torch.rand(2, 6)
    t.view(-1)[3] = bad
    with pytest.raises(ValueError, match=f"{field} contains NaN or Inf"):
        vt(**{field: t})


def test_integer_features():
    with pytest.raises(ValueError, match="features must be a floating tensor.*float"):
        vt(features=torch.ones(2, 6, 12, dtype=torch.int64))


def test_zero_frames():
    with pytest.raises(ValueError, match="T == 0"):
        vt(features=torch.randn(0, 6, 12), saliency=None, grid=(0, 2, 3))


@pytest.mark.parametrize("section,msg", [((4, 4, 2), "sums to 10"), ((5, 4, 3), "even")])
def test_bad_strope_section(section, msg):
    with pytest.raises(ValueError, match=msg):
        prune_video_tokens(vt(), TangoConfig(strope_section=section))


def test_odd_dim_needs_strope_off():
    with pytest.raises(ValueError, match="strope=False"):
        prune_video_tokens(vt(D=13), TangoConfig())
    assert prune_video_tokens(vt(D=13), TangoConfig(strope=False)).num_kept >= 1


def test_timestamps_length():
    with pytest.raises(ValueError, match="timestamps must have shape \\(T,\\)"):
        vt(timestamps=torch.arange(3.0))


def test_sink_outside_frame():
    with pytest.raises(ValueError, match="sink_indices \\[169\\]"):
        prune_video_tokens(vt(), TangoConfig(sink_indices=[169]))


@pytest.mark.parametrize("field,value", [("segment", "dp"), ("budget", "tight"), ("similarity", "approx")])
def test_unknown_choice(field, value):
    with pytest.raises(ValueError, match=f"{field} must be one of"):
        TangoConfig(**{field: value})


def test_unknown_method_and_option():
    with pytest.raises(ValueError, match="unknown method 'tangoo'"):
        get_method("tangoo")
    with pytest.raises(ValueError, match="unknown tango options \\['alhpa'\\]"):
        get_method("tango")(retention=0.1, alhpa=2)


def test_not_video_tokens():
    with pytest.raises(ValueError, match="VideoTokens"):
        prune_video_tokens(torch.randn(2, 6, 12))
