"""The vLLM plugin on Qwen3.5 (dense and MoE) and Qwen3-VL-MoE: vLLM 0.32 (CPU) in subprocesses with .venv-vllm's
python, on tiny random checkpoints (tests/vllm/tiny.py), with tests/vllm_helpers.py's shared runs: 7 engine runs,
started together when the module starts (plugin installed with TANGO_PRUNE_METHOD unset: tests/test_vllm.py, since
register() returns before it touches vLLM, whatever the model):
    .venv/bin/python -m pytest tests/test_vllm_qwen3_5.py

vLLM 0.32's CPU Gated DeltaNet kernel takes only bfloat16 (and key/value heads of 64 or 128), so the hybrid Qwen3.5
LLMs run in bfloat16 here, transformers too (tests/vllm/engine_check.py DTYPE); Qwen3-VL-MoE runs in float32. In
bfloat16 the two engines' towers round differently, so HF's own tower feeds its pruner slightly different features
(measured: 50 of 51 kept tokens the same); the exact comparison gives HF the video tokens vLLM's pruner saw.
"""
from __future__ import annotations

import pytest
import torch

from tango_prune import VideoTokens
from tango_prune.integrations.vllm.settings import Settings, kept_count, make_pruner
from tests.vllm_helpers import RATE

GRID = (8, 8, 8)  # 16 frames of 256 px: 8 temporal patches of 8 x 8 merged tokens
QWEN35 = ("qwen3_5", "qwen3_5_moe")
FAMILIES = (*QWEN35, "qwen3_vl_moe")
# bfloat16 log-probs of the two engines, with no pruning at all: measured max difference 3.9e-3 over vLLM's top 5
# (tiny Qwen3.5, dense); the same bound must then hold with pruning
BF16_TOL = 1e-2
CLASSES = {"qwen3_5": "TangoQwen3_5", "qwen3_5_moe": "TangoQwen3_5Moe", "qwen3_vl_moe": "TangoQwen3VLMoe"}


@pytest.fixture(scope="module")
def runs(vllm_runs):
    """The reference release's shared runs (tango with transformers' side on Qwen3.5; stock; Qwen3.5 unpruned through
    the pruning path), all started now."""
    return vllm_runs["0.32"].prefetch(*[(f, m) for f in FAMILIES for m in ("tango", "stock")], ("qwen3_5", "none"))


def tango(runs, family):  # pruned; with --hf on Qwen3.5 (tests/vllm_helpers.py EngineRuns.hf)
    return runs.run(family, "tango")


def stock(runs, family):  # the plugin not loaded (empty plugin allowlist); Qwen3.5: also transformers, unpruned
    return runs.run(family, "stock")


def records(res) -> list[dict]:
    recs = [torch.load(f) for f in sorted(res["dump"].glob("*.pt"))]
    return [d for d in recs if tuple(d["grid"]) == GRID]


def top5_gap(vllm_top5, hf_at_vllm_top5) -> float:
    """Largest log-prob difference over vLLM's top 5 ids (HF's log-probs of the same ids: near ties in bfloat16
    may order the two top-5 lists differently)."""
    assert [t for t, _ in vllm_top5] == [t for t, _ in hf_at_vllm_top5]
    return max(abs(a - b) for (_, a), (_, b) in zip(vllm_top5, hf_at_vllm_top5))


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_reserves_exactly_the_kept_count(runs, family):
    T, H, W = GRID
    K = kept_count(Settings("tango", {}), H * W, T, 1.0 - RATE)
    res = tango(runs, family)
    pruned, full = res["vllm"], stock(runs, family)["vllm"]
    assert full["video_tokens"] == T * H * W and pruned["video_tokens"] == K == 51
    assert len(pruned["prompt_token_ids"]) == len(full["prompt_token_ids"]) - T * H * W + K
    assert f"{CLASSES[family]} prunes videos with method=tango" in res["log"]


@pytest.mark.parametrize("family", FAMILIES)
def test_kept_tokens_are_our_pruners(runs, family):
    """The worker kept exactly the tokens (and merged features) our pruner picks on the embeddings, saliency and
    timestamps it recorded, with the tower's global-query saliency."""
    recs = records(tango(runs, family))
    assert len(recs) == 1
    d = recs[0]
    assert d["saliency_source"] == "qwen-global-query" and d["merged"].any()
    out = make_pruner(Settings("tango", {}), 1.0 - RATE)(VideoTokens(d["features"], d["saliency"], d["grid"],
                                                                     d["timestamps"]))
    assert torch.equal(out.index, d["index"]) and torch.equal(out.features, d["kept_features"])


@pytest.mark.parametrize("family", QWEN35)
def test_engines_agree_unpruned(runs, family):
    """Without pruning, vLLM (bfloat16) and transformers (bfloat16) + apply(model, "none") give the same first token
    and log-probs within BF16_TOL: the premise of the pruned comparison below."""
    res = stock(runs, family)
    v, h = res["vllm"]["top5"], res["hf"]
    assert v[0][0] == h["top5"][0][0]
    assert top5_gap(v, h["at_vllm_top5"]) < BF16_TOL
    assert h["stats"][0]["tokens_kept"] == GRID[0] * GRID[1] * GRID[2]


@pytest.mark.parametrize("family", QWEN35)
def test_pruned_matches_hf_apply(runs, family):
    """Pruned (tango, rate 0.9): given the video tokens vLLM's pruner saw, the HF adapter keeps the same set, and the
    first token and its log-probs agree within the unpruned bound; from HF's own tower (which rounds differently in
    bfloat16) it keeps the same count and nearly the same set."""
    res = tango(runs, family)
    (d,) = records(res)
    K = d["index"].numel()
    given, own, v = res["hf_given"], res["hf"], res["vllm"]["top5"]
    assert given["index"] == d["index"].tolist() and given["stats"][0]["tokens_kept"] == K
    assert v[0][0] == given["top5"][0][0]
    assert top5_gap(v, given["at_vllm_top5"]) < BF16_TOL
    assert own["stats"][0]["tokens_kept"] == K and own["stats"][0]["saliency"] == "qwen-global-query"
    assert len(set(own["index"]) & set(d["index"].tolist())) >= 0.9 * K


def test_qwen3_5_keep_all_through_pruning_path_equals_stock(runs):
    """Positions: method `none` at rate 0.9 sends every token through the pruning path (the mixin's positions, the
    hybrid LLM's state) and must reproduce stock vLLM's unpruned output exactly (same kernels, same dtype: measured
    equal). In bfloat16 the HF comparison above cannot see a position error on this tiny model (shifting the kept
    tokens' h and w by one moved the log-probs by 1e-5); this run can (the same shift on all video tokens changed
    the generated tokens)."""
    ref = stock(runs, "qwen3_5")["vllm"]
    none = runs.run("qwen3_5", "none")["vllm"]
    # with pruning on, vLLM's Qwen3 processor puts all of a video's placeholders in its first frame's slot
    assert sorted(none["prompt_token_ids"]) == sorted(ref["prompt_token_ids"])
    assert none["generated"] == ref["generated"] and none["top5"] == ref["top5"]
