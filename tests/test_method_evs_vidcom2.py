"""EVS and VidCom2: kept sets equal vLLM's own masks (stored vectors, and live when .venv-vllm exists), counts under
both floors, what each keeps on inputs where the answer is obvious, options, and the shared invariants."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tango_prune import VideoTokens, get_method
from tango_prune.core.budget import exact_count

from .strategies import retentions, videos
from .test_properties import SETTINGS, check_valid

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "tests" / "data" / "prune_vectors_vllm.pt"
SCRIPT = ROOT / "tests" / "vllm" / "make_prune_vectors.py"
VLLM_PY = Path(os.environ.get("TANGO_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
METHODS = ("evs", "vidcom2")


def case_tokens(case) -> VideoTokens:
    T, H, W = case["thw"]
    m = case["merge"]
    x = case["embeds"].float()
    return VideoTokens(x.view(T, (H // m) * (W // m), -1), None, (T, H // m, W // m))


def test_kept_sets_equal_vllms_stored_masks():
    data = torch.load(VECTORS, weights_only=False)
    matched, total, real = 0, 0, 0
    for case in data["cases"]:
        vt = case_tokens(case)
        for name in METHODS:
            total += 1
            out = get_method(name)(retention=1.0 - case["q"])(vt)  # vLLM's q is the share pruned
            matched += torch.equal(out.index, case["masks"][name].nonzero().flatten())
            real += case["name"].startswith("bikes")
    assert total == 22 and real == 6  # 8 seeded random videos + 3 rates on the real clip, two methods each
    assert matched == total, f"{matched} of {total} cases equal vLLM {data['vllm']}'s masks"


def test_kept_sets_equal_vllm_live():
    if not VLLM_PY.exists():
        if os.environ.get("TANGO_REQUIRE_VLLM") == "1":
            pytest.fail(f"{VLLM_PY} is absent (TANGO_REQUIRE_VLLM=1)")
        pytest.skip(f"{VLLM_PY} is absent; build it with scripts/setup_vllm.sh")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TANGO_PRUNE_", "VLLM_"))}
    env["PYTHONPATH"] = str(ROOT / "src")
    run = subprocess.run([str(VLLM_PY), str(SCRIPT), "check", "--vectors", str(VECTORS)], capture_output=True,
                         text=True, env=env, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["vllm_reproduces_stored"] == result["cases"] == result["ours_equals_vllm"] == 22, result


# --- EVS ----------------------------------------------------------------------------------------------------

def moving_block(T=4, L=9, D=8, moving=(2, 5), seed=0):
    """A still video except the tokens at ``moving``, which are fresh in every frame."""
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(1, L, D, generator=g).repeat(T, 1, 1) + 1e-3 * torch.randn(T, L, D, generator=g)
    f[:, list(moving)] = torch.randn(T, len(moving), D, generator=g)
    return VideoTokens(f, None, (T, 3, 3))


def test_evs_keeps_the_first_frame_then_what_moved():
    vt = moving_block()
    out = get_method("evs")(retention=15 / 36)(vt)  # int(36 * 15/36) = 15: frame 0 (9) + the 6 moving tokens
    expect = list(range(9)) + [t * 9 + p for t in (1, 2, 3) for p in (2, 5)]
    assert out.index.tolist() == expect and not out.merged.any()
    assert out.info["kept_per_frame"] == [9, 2, 2, 2]


@pytest.mark.parametrize("r", [0.01, 0.1, 0.3, 0.77, 1.0])
def test_evs_counts_under_both_floors(r):
    vt = moving_block(T=6)
    N, L = 54, 9
    assert get_method("evs")(retention=r)(vt).num_kept == max(L, int(N * r))
    assert get_method("evs")(retention=r, floor="exact")(vt).num_kept == exact_count(r, N)


def test_evs_exact_floor_cuts_the_first_frame_in_reading_order():
    out = get_method("evs")(retention=4 / 36, floor="exact")(moving_block())
    assert out.index.tolist() == [0, 1, 2, 3]


# --- VidCom2 ------------------------------------------------------------------------------------------------

def test_vidcom2_gives_the_distinctive_frame_more_and_keeps_outliers():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(1, 1, 16, generator=g)
    f = base + 0.05 * torch.randn(5, 16, 16, generator=g)
    f[3] = torch.randn(16, 16, generator=g)  # one frame unlike the rest
    f[1, 7] = -base[0, 0] * 3  # one token unlike its frame and the video
    out = get_method("vidcom2")(retention=0.25)(VideoTokens(f, None, (5, 4, 4)))
    per = out.info["kept_per_frame"]
    assert per[3] == max(per) and per[3] > 4 and sum(per) == 20 == out.num_kept
    assert 1 * 16 + 7 in out.index.tolist()


@pytest.mark.parametrize("r", [0.005, 0.1, 0.5, 1.0])
def test_vidcom2_counts_under_both_floors(r):
    vt = moving_block(T=6)
    assert get_method("vidcom2")(retention=r)(vt).num_kept == max(6, int(54 * r))
    assert get_method("vidcom2")(retention=r, floor="exact")(vt).num_kept == exact_count(r, 54)


@pytest.mark.parametrize("name", METHODS)
def test_options_are_validated(name):
    with pytest.raises(ValueError, match="floor"):
        get_method(name)(retention=0.1, floor="round")
    with pytest.raises(ValueError, match="valid: retention"):
        get_method(name)(retention=0.1, q=0.9)
    with pytest.raises(ValueError, match="retention"):
        get_method(name)(retention=0.0)


# --- the shared invariants, under both floors (EVS's one-frame floor is outside test_methods' count bound) -----

@pytest.mark.parametrize("name", METHODS)
@settings(**{**SETTINGS, "max_examples": 25})
@given(vt=videos(max_frames=16, max_side=10, max_dim=40, dtypes=(torch.float32, torch.bfloat16)), r=retentions,
       floor=st.sampled_from(["vllm", "exact"]))
def test_valid_counted_and_deterministic(name, vt, r, floor):
    T, L, _ = vt.features.shape
    pruner = get_method(name)(retention=r, floor=floor)
    out = pruner(vt)
    check_valid(vt, out)
    lower = L if name == "evs" else T
    expect = max(lower, min(int(T * L * r), T * L)) if floor == "vllm" else exact_count(r, T * L)
    assert out.num_kept == expect
    assert torch.equal(out.index, pruner(vt).index)
