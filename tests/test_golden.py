"""Reference mode against vectors made with the authors' release (../shared/golden)."""
import pytest
import torch

from tango_prune import TangoConfig, VideoTokens, prune_video_tokens
from tango_prune.core.density import dpc_knn
from tango_prune.core.segment import fastvid_segments, holitom_segments
from tango_prune.core.strope import grid_coords, rotated_unit_features, strope

from .conftest import golden_dir, load_golden

PIPELINE = [
    "ov_r010_fastvid.pt",
    "ov_r010_holitom.pt",
    "ov_r010_nocontext.pt",
    "ov_r015_holitom.pt",
    "ov_r020_holitom.pt",
    "ov_r025_k3_nosinks.pt",
    "single_frame.pt",
]
UNITS = ["unit_dpc_knn.pt", "unit_strope.pt", "unit_holitom_segmentation.pt", "unit_fastvid_segmentation.pt"]


def test_every_golden_file_is_covered():
    names = sorted(p.name for p in golden_dir().glob("*.pt"))
    assert names == sorted(PIPELINE + UNITS), f"new golden files need a test: {names}"


def release_config(p: dict) -> TangoConfig:
    return TangoConfig.release(
        retention=p["retention"], segment=p["segment_type"], segment_tau=p["segment_tau"],
        static_tau=p["static_tau"], context_ratio=p["context_ratio"], k_neighbors=p["k_neighbors"],
        alpha=p["alpha"], beta=p["beta"], base_time=p["base_time"], base_space=p["base_space"],
        strope_section=tuple(p["strope_section"]), sink_indices=tuple(p["sink_indices"]),
    )


def video_tokens(inputs: dict) -> VideoTokens:
    return VideoTokens(inputs["features"], inputs["saliency"], tuple(inputs["grid"]), inputs["timestamps"])


def assert_rows_match(ours: torch.Tensor, gold: torch.Tensor, max_permuted: int = 2):
    """Rows allclose (1e-4); at most ``max_permuted`` rows may match only as a permutation of each other.

    Why: the release writes a segment's merged features onto its anchors in
    density-score rank order, and it adds 1e-6 random noise to the densities.
    In ov_r025_k3_nosinks two anchors' scores differ by 2.2e-7 (float64), so the
    release's own seeds disagree on which of the two gets which merged feature;
    the kept set and every other row are unaffected.
    """
    close = torch.isclose(ours, gold, atol=1e-4, rtol=1e-4).all(dim=1)
    bad = (~close).nonzero().flatten()
    assert bad.numel() <= max_permuted, f"{bad.numel()} rows differ from the release: {bad.tolist()[:10]}"
    if bad.numel():
        pair = torch.isclose(ours[bad].unsqueeze(1), gold[bad].unsqueeze(0), atol=1e-4, rtol=1e-4).all(-1)
        assert pair.any(0).all() and pair.any(1).all(), "differing rows are not a permutation of the release's rows"


@pytest.mark.parametrize("name", PIPELINE)
def test_pipeline_matches_release(name):
    g = load_golden(name)
    assert g["stable_across_noise_seeds"]
    out = prune_video_tokens(video_tokens(g["inputs"]), release_config(g["params"]))
    o = g["outputs"]
    assert out.segments == list(o["segment_sizes"])
    assert torch.equal(out.index, o["kept_indices"])
    assert_rows_match(out.features, o["kept_features"])


@pytest.mark.parametrize("name", [n for n in PIPELINE if n != "ov_r025_k3_nosinks.pt"])
def test_pipeline_features_match_exactly_where_no_near_tie(name):
    g = load_golden(name)
    out = prune_video_tokens(video_tokens(g["inputs"]), release_config(g["params"]))
    torch.testing.assert_close(out.features, g["outputs"]["kept_features"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", PIPELINE)
def test_rotated_features_match_release(name):
    g = load_golden(name)
    i, p = g["inputs"], g["params"]
    T, H, W = tuple(i["grid"])
    rot = rotated_unit_features(
        i["features"], W, i["timestamps"], tuple(p["strope_section"]), p["base_time"], p["base_space"]
    )
    torch.testing.assert_close(rot, g["outputs"]["roped_features"], atol=1e-4, rtol=1e-4)


def test_strope_unit():
    g = load_golden("unit_strope.pt")
    x = g["x"]
    T, L, D = x.shape
    rows, cols = grid_coords(int(L**0.5), torch.arange(L))
    out = strope(x, g["timestamps"], rows, cols, tuple(g["strope_section"]), g["base_time"], g["base_space"])
    torch.testing.assert_close(out, g["out"], atol=1e-4, rtol=1e-4)


def test_dpc_knn_unit():
    g = load_golden("unit_dpc_knn.pt")
    got = dpc_knn(g["x"], g["cluster_num"], g["k"])
    for row, ref in zip(got, g["centers"]):
        assert set(row.tolist()) == set(ref.tolist())


def test_dpc_knn_blocked_equals_full():
    g = load_golden("unit_dpc_knn.pt")
    full = dpc_knn(g["x"], g["cluster_num"], g["k"])
    blocked = dpc_knn(g["x"], g["cluster_num"], g["k"], block_tokens=8)  # 1-row blocks, recomputed distances
    assert torch.equal(full.sort(-1).values, blocked.sort(-1).values)


def test_holitom_segmentation_unit():
    g = load_golden("unit_holitom_segmentation.pt")
    assert holitom_segments(g["frame_similarity"], g["tau"]) == list(g["segment_sizes"])


def test_fastvid_segmentation_unit():
    g = load_golden("unit_fastvid_segmentation.pt")
    assert fastvid_segments(g["frame_similarity"], g["c"], g["tau"]) == list(g["segment_sizes"])
