"""Batch invariance of the vLLM plugin: a request answered in a batch gets the answer it gets alone.

One engine per run (tests/vllm/batch_check.py): 8 video requests of different frame counts, frame sizes and prompts,
first each alone, then all 8 in one ``generate`` call (max_num_seqs 8). The prefill budget is small, so the
scheduler cuts prompts into chunks, at different places alone and in the batch: that is what made Qwen3-VL answers
depend on their batch (a chunk resuming inside a pruned video got shifted M-RoPE positions; see
integrations/vllm/positions.py). Families: Qwen2.5-VL, Qwen3-VL, Qwen3.5 dense and MoE (bfloat16) and LLaVA-OV. Each also runs
stock (plugin not loaded, no pruning), which must be invariant the same way: the premise the plugin is held to.
~5 min on 2 CPU cores.
"""
from __future__ import annotations

import json

import pytest
import torch

from tango_prune.integrations.vllm.settings import Settings, kept_count
from tests.test_vllm import SCRIPTS, build_checkpoints, vllm_run

RATE = 0.9
N = 8
# max_num_batched_tokens: below every pruned Qwen prompt (42-201 tokens) and the LLaVA ones (7-20), so most
# prompts are cut, alone and in the batch, at different places
CHUNK = {"qwen2_5_vl": 48, "qwen3_vl": 48, "qwen3_5": 48, "qwen3_5_moe": 48, "llava_ov": 8}
FAMILIES = list(CHUNK)
LOGPROB_TOL = 1e-4  # fp32; stock vLLM measured within 1e-6 (batched matmuls of other shapes)
# Qwen3.5 runs in bfloat16 (vLLM's CPU linear attention takes nothing else): stock vLLM's own log-probs move by up to
# 4e-3 between alone and batched, and near-ties reorder the top 5; the greedy tokens stay equal
BF16 = {"qwen3_5", "qwen3_5_moe"}
BF16_TOL = 2e-2


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-batch-ckpt")
    build_checkpoints(root, FAMILIES)
    return root


@pytest.fixture(scope="module")
def runs(ckpts, tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-batch-runs")
    cache: dict[str, dict] = {}

    def get(family: str, mode: str) -> dict:
        key = f"{family}-{mode}"
        if key not in cache:
            out, dump = root / f"{key}.json", root / f"{key}-dump"
            args = [str(SCRIPTS / "batch_check.py"), "--family", family, "--model", str(ckpts / family),
                    "--out", str(out), "--n", str(N), "--chunk", str(CHUNK[family])]
            env = {"VLLM_PLUGINS": ""} if mode == "stock" else {"TANGO_PRUNE_METHOD": mode,
                                                                 "TANGO_PRUNE_DEBUG_DIR": str(dump)}
            args += [] if mode == "stock" else ["--rate", str(RATE)]
            p, secs = vllm_run(args, env, timeout=600)
            assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
            res = json.loads(out.read_text())
            res["dumps"] = {tag: [torch.load(f) for f in sorted((dump / tag).glob("*.pt"))] for tag in ("alone", "batch")}
            res["seconds"] = secs
            cache[key] = res
        return cache[key]

    return get


def assert_same_answers(res: dict, family: str) -> None:
    alone, batch = res["alone"], res["batch"]
    bf16 = family in BF16
    assert len(alone) == len(batch) == N
    diffs = []
    for i, (a, b) in enumerate(zip(alone, batch)):
        if a["prompt_token_ids"] != b["prompt_token_ids"] or a["generated"] != b["generated"]:
            diffs.append(f"request {i}: alone {a['generated']} vs batch {b['generated']}")
            continue
        for step, (sa, sb) in enumerate(zip(a["top5"], b["top5"])):
            if bf16:  # the greedy token's log-prob (tokens are equal: checked above)
                if abs(sa[0][1] - sb[0][1]) > BF16_TOL:
                    diffs.append(f"request {i} step {step}: log-prob {sa[0][1]:.4f} vs {sb[0][1]:.4f}")
                    break
                continue
            ids_a, ids_b = [t for t, _ in sa], [t for t, _ in sb]
            gap = max(abs(x - y) for (_, x), (_, y) in zip(sa, sb))
            if ids_a != ids_b or gap > LOGPROB_TOL:
                diffs.append(f"request {i} step {step}: top-5 {ids_a} vs {ids_b}, log-prob gap {gap:.2e}")
                break
    assert not diffs, "answers depend on the batch:\n" + "\n".join(diffs)


@pytest.mark.parametrize("family", FAMILIES)
def test_stock_vllm_is_batch_invariant(runs, family):
    """The premise: stock vLLM (plugin not loaded, no pruning), chunked the same way, answers alike alone and in a
    batch on this CPU in fp32."""
    assert_same_answers(runs(family, "stock"), family)


@pytest.mark.parametrize("family", FAMILIES)
def test_tango_is_batch_invariant(runs, family):
    """Tango at rate 0.9: the same prompt, greedy tokens and log-probs alone and in a batch."""
    assert_same_answers(runs(family, "tango"), family)


def test_uniform_is_batch_invariant_on_qwen3(runs):
    """Another method through the same path (uniform differed on 12 of 16 requests before the fix)."""
    assert_same_answers(runs("qwen3_vl", "uniform"), "qwen3_vl")


@pytest.mark.parametrize("family", FAMILIES)
def test_each_video_pruned_as_alone(runs, family):
    """What the worker pruned in the batch is what it pruned for the same video alone: the same features and
    saliency reached the pruner (none handed to another request's video), the same tokens kept, at the exact count
    the prompt reserved. Every request has its own grid, so a recorded video names its request."""
    res = runs(family, "tango")
    alone = {tuple(d["grid"]): d for d in res["dumps"]["alone"]}
    batch = {tuple(d["grid"]): d for d in res["dumps"]["batch"]}
    assert len(alone) == len(batch) == N, (sorted(alone), sorted(batch))
    settings = Settings("tango", {})
    for grid, a in alone.items():
        b = batch[grid]
        assert torch.equal(a["features"], b["features"]), grid  # each video encoded alone, in the batch too
        assert (a["saliency"] is None) == (b["saliency"] is None)
        if a["saliency"] is not None:
            assert torch.equal(a["saliency"], b["saliency"]), grid
        assert torch.equal(a["index"], b["index"]), grid
        T, H, W = grid
        assert len(b["index"]) == kept_count(settings, H * W, T, 1 - RATE)
