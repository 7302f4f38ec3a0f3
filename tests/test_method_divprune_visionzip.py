"""What defines divprune (max-min diversity) and visionzip (dominant top-k + contextual merging)."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from tango_prune import VideoTokens, get_method
from tango_prune.methods.divprune import max_min_diverse, nearest_other_distance


def min_pairwise(x, idx):
    u = F.normalize(x[idx], dim=-1)
    d = 1 - u @ u.T
    return float(d[~torch.eye(len(idx), dtype=torch.bool)].min())


def test_divprune_is_max_min_optimal_on_a_small_case():
    # eight directions on a circle plus two near-duplicates: the best 4 are the compass points' spread
    ang = torch.tensor([0, 45, 90, 135, 180, 225, 270, 315, 2, 93], dtype=torch.float32) * torch.pi / 180
    x = torch.stack([ang.cos(), ang.sin(), torch.zeros_like(ang)], dim=-1)
    vt = VideoTokens(x.view(1, 10, 3), None, (1, 2, 5))
    out = get_method("divprune")(retention=0.4)(vt)
    best = max(min_pairwise(x, list(c)) for c in itertools.combinations(range(10), 4))
    assert out.num_kept == 4
    assert min_pairwise(x, out.index.tolist()) == pytest.approx(best, abs=1e-6)
    assert not ({8, 9} & set(out.index.tolist())), "near-duplicates are never worth a slot"


def test_divprune_first_pick_is_the_most_isolated_token():
    x = torch.tensor([[1.0, 0, 0], [0.99, 0.1, 0], [0, 1.0, 0], [0.1, 0.99, 0], [0, 0, 1.0]])
    u = F.normalize(x, dim=-1)
    assert int(max_min_diverse(u, 1)[0]) == 4
    d = nearest_other_distance(u, block=2)  # blocked = unblocked
    assert torch.allclose(d, nearest_other_distance(u, block=64))


def test_visionzip_dominant_are_saliency_topk_and_context_merges_to_nearest_target():
    g = torch.Generator().manual_seed(0)
    T, L, D = 2, 36, 8
    f, sal = torch.randn(T, L, D, generator=g), torch.rand(T, L, generator=g)
    vt = VideoTokens(f, sal, (T, 6, 6))
    out = get_method("visionzip")(retention=8 / 36, dominant_ratio=0.75)(vt)  # 8 per frame: 6 dominant + 2 contextual
    assert out.num_kept == 16
    for t in range(T):
        rows = (out.positions[:, 0] == t).nonzero().flatten()
        dominant = set(torch.topk(sal[t], 6).indices.tolist())
        plain = {int(out.index[r]) - t * L for r in rows if not out.merged[r]}
        assert dominant <= {int(out.index[r]) - t * L for r in rows}
        targets = [int(out.index[r]) for r in rows if int(out.index[r]) - t * L not in dominant]
        assert len(targets) == 2 and plain >= dominant
        flat = f.reshape(T * L, D)
        others = [t * L + i for i in range(L) if i not in dominant and t * L + i not in targets]
        for o in others:  # each joins its most similar target
            sims = torch.stack([F.cosine_similarity(flat[o], flat[tg], dim=0) for tg in targets])
            assert int(out.index[out.assignment[o]]) == targets[int(sims.argmax())]
        for tg in targets:  # a target becomes itself + the mean of its members
            row = int((out.index == tg).nonzero())
            members = [o for o in others if int(out.assignment[o]) == row]
            want = flat[tg] + (flat[members].mean(0) if members else 0)
            assert torch.allclose(out.features[row], want, atol=1e-5)


def test_visionzip_without_saliency_reports_the_fallback():
    vt = VideoTokens(torch.randn(2, 16, 8), None, (2, 4, 4))
    assert get_method("visionzip")(retention=0.25)(vt).info["saliency"] == "feature-distinctiveness"
    with pytest.raises(ValueError, match="dominant_ratio"):
        get_method("visionzip")(retention=0.25, dominant_ratio=0)


def test_visionzip_is_per_frame_topk_when_frames_keep_three_or_fewer():
    """Why `visionzip` gave exactly `topk`'s answers on testbed v2 (issue 27): 16 tokens per frame at 10% keep 1-2
    per frame, and round(k * 54/64) = k for k <= 3, so no contextual token is left and VisionZip's dominant tokens are
    per-frame saliency top-k, as the paper's split prescribes. From 4 kept per frame on, one context token appears."""
    g = torch.Generator().manual_seed(3)
    feats, sal = torch.randn(16, 16, 8, generator=g), torch.rand(16, 16, generator=g)
    vt = VideoTokens(feats, sal, (16, 4, 4))
    for r in (0.1, 0.15, 0.18):  # 26, 38, 46 tokens: at most 3 per frame
        vz, tk = get_method("visionzip")(retention=r)(vt), get_method("topk")(retention=r)(vt)
        assert torch.equal(vz.index, tk.index) and not vz.merged.any()
    vz, tk = get_method("visionzip")(retention=0.25)(vt), get_method("topk")(retention=0.25)(vt)  # 4 per frame
    assert vz.merged.any() and not torch.equal(vz.index, tk.index)
