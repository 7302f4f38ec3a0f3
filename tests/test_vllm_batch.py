"""Batch invariance of the vLLM plugin: a request answered in a batch gets the answer it gets alone.

One engine per run (tests/vllm/batch_check.py): 8 video requests of different frame counts, frame sizes and prompts,
first each alone, then all 8 in one ``generate`` call (max_num_seqs 8). The prefill budget is small, so the
scheduler cuts prompts into chunks, at different places alone and in the batch: that is what made Qwen3-VL answers
depend on their batch (a chunk resuming inside a pruned video got shifted M-RoPE positions; see
integrations/vllm/positions.py). Families: Qwen2.5-VL, Qwen3-VL, Qwen3.5 dense and MoE (bfloat16) and LLaVA-OV. Where
a family's answers depend on the batch, the same check runs on stock vLLM (plugin not loaded, no pruning) and the
failure says whether stock differs too (then the cause is vLLM's, or the machine's kernels, not the plugin's). Stock
runs only then: when the plugin's answers are batch invariant, stock's verdict changes nothing a user relies on
(they were six engine runs, ~100 s, on every CI run).
The scheduler's chunks are recorded (tests/vllm/batch_check.py): every pruned Qwen family has chunks that resume
inside a video, cut at other places alone than in the batch, or the test would prove nothing. Prefix caching is on
(vLLM's default). The runs start together when the module starts (tests/vllm_helpers.py).
"""
from __future__ import annotations

import pytest
import torch

from tango_prune.integrations.vllm.settings import Settings, kept_count
from tests.vllm_helpers import SCRIPTS, RunCache

RATE = 0.9
N = 8
# max_num_batched_tokens: below every pruned Qwen prompt (42-201 tokens) and the LLaVA ones (7-20), so most
# prompts are cut, alone and in the batch, at different places
CHUNK = {"qwen2_5_vl": 48, "qwen3_vl": 48, "qwen3_5": 48, "qwen3_5_moe": 48, "llava_ov": 8}
FAMILIES = list(CHUNK)
LOGPROB_TOL = 1e-5  # fp32; stock vLLM and tango measured within 9.5e-7 (batched matmuls of other shapes)
# Qwen3.5 runs in bfloat16 (vLLM's CPU linear attention takes nothing else): stock vLLM's own log-probs move by up to
# 4e-3 between alone and batched, and near-ties reorder the top 5; the greedy tokens stay equal
BF16 = {"qwen3_5", "qwen3_5_moe"}
BF16_TOL = 2e-2


VIDEO_TOKEN = {"llava_ov": 398}  # zoo.TINY_IDS["video"]; the Qwen checkpoints' <|video_pad|> is 262
# stock: only to explain a failure; tango-chunked: Qwen3-VL's tower 2 temporal patches at a time (chunk_frames)
RUNS = [(f, "tango") for f in FAMILIES] + [("qwen3_vl", "uniform"), ("qwen3_vl", "tango-chunked")]
ENV = {"stock": {"VLLM_PLUGINS": ""},
       "tango-chunked": {"TANGO_PRUNE_METHOD": "tango", "TANGO_PRUNE_OPTIONS": '{"chunk_frames": 2}'}}


@pytest.fixture(scope="module")
def runs(vllm_ckpts, tmp_path_factory):
    vllm_ckpts.prefetch(*FAMILIES)
    cache = RunCache(tmp_path_factory.mktemp("vllm-batch-runs"))

    def start(family: str, mode: str) -> str:
        key = f"{family}-{mode}"
        args = [SCRIPTS / "batch_check.py", "--family", family, "--model", vllm_ckpts[family], "--out", cache.out(key),
                "--n", str(N), "--chunk", str(CHUNK[family])]
        args += [] if mode == "stock" else ["--rate", str(RATE)]
        cache.start(key, args, ENV.get(mode, {"TANGO_PRUNE_METHOD": mode}))
        return key

    for family, mode in RUNS:
        start(family, mode)

    def get(family: str, mode: str) -> dict:
        res = cache.get(start(family, mode))
        if "dumps" not in res:
            res["dumps"] = {tag: [torch.load(f) for f in sorted((res["dump"] / tag).glob("*.pt"))]
                            for tag in ("alone", "batch")}
        return res

    return get


def inside_video(ids: list[int], start: int, token: int) -> bool:
    """A chunk starting at ``start`` resumes inside a run of video placeholders (not at its first)."""
    return 0 < start < len(ids) and ids[start] == token and ids[start - 1] == token


def batch_diffs(res: dict, family: str) -> list[str]:
    """Where a run's batched answers differ from its answers alone (empty: invariant)."""
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
    return diffs


def assert_same_answers(runs, family: str, mode: str) -> None:
    diffs = batch_diffs(runs(family, mode), family)
    if diffs:
        stock = batch_diffs(runs(family, "stock"), family)
        verdict = (f"stock vLLM differs too ({len(stock)} requests): vLLM's or this machine's, not the plugin's"
                   if stock else "stock vLLM is batch invariant here: the plugin's")
        pytest.fail(f"{mode} answers depend on the batch ({verdict}):\n" + "\n".join(diffs))


@pytest.mark.parametrize("family", FAMILIES)
def test_tango_is_batch_invariant(runs, family):
    """Tango at rate 0.9: the same prompt, greedy tokens and log-probs alone and in a batch."""
    assert_same_answers(runs, family, "tango")


@pytest.mark.parametrize("family", FAMILIES)
def test_chunks_resume_inside_videos(runs, family):
    """The case this file exists for happened: a prefill chunk resumed inside a pruned video, alone and in the batch,
    and the two passes cut some prompt at different places (a change in vLLM's scheduler that stopped cutting
    there would leave the tests above proving nothing). Every prompt was prefilled whole, in order."""
    res = runs(family, "tango")
    token = VIDEO_TOKEN.get(family, 262)
    cuts = {}
    for tag in ("alone", "batch"):
        for i, r in enumerate(res[tag]):
            ids, chunks = r["prompt_token_ids"], r["chunks"]
            assert chunks and chunks[-1][0] + chunks[-1][1] == len(ids), (tag, i, chunks, len(ids))
            assert all(a[0] + a[1] == b[0] for a, b in zip(chunks, chunks[1:])), (tag, i, chunks)
            cuts[tag, i] = [c[0] for c in chunks]
        inside = [i for i, r in enumerate(res[tag]) if any(inside_video(r["prompt_token_ids"], s, token)
                                                           for s in cuts[tag, i])]
        assert inside, f"{tag}: no prefill chunk resumed inside a video (chunks {[r['chunks'] for r in res[tag]]})"
    assert any(cuts["alone", i] != cuts["batch", i] for i in range(N)), "alone and batched prompts were cut alike"


def test_uniform_is_batch_invariant_on_qwen3(runs):
    """Another method through the same path (uniform differed on 12 of 16 requests before the fix)."""
    assert_same_answers(runs, "qwen3_vl", "uniform")


def test_chunked_is_batch_invariant_on_qwen3(runs):
    """Chunk by chunk (the tower on 2 temporal patches at a time, deepstack carried): a batch answers as alone."""
    assert_same_answers(runs, "qwen3_vl", "tango-chunked")


@pytest.mark.parametrize("family, mode", [(f, "tango") for f in FAMILIES] + [("qwen3_vl", "tango-chunked")])
def test_each_video_pruned_as_alone(runs, family, mode):
    """What the worker pruned in the batch is what it pruned for the same video alone: the same features and
    saliency reached the pruner (none handed to another request's video), the same tokens kept, at the exact count
    the prompt reserved. Every request has its own grid, so a recorded video names its request."""
    res = runs(family, mode)
    grids = {tag: [tuple(d["grid"]) for d in res["dumps"][tag]] for tag in ("alone", "batch")}
    # one record per video and pass: a video pruned twice (or never) shows here, before the records are keyed by grid
    assert len(grids["alone"]) == len(grids["batch"]) == N and sorted(grids["alone"]) == sorted(grids["batch"]), grids
    assert len(set(grids["batch"])) == N, grids
    alone = {tuple(d["grid"]): d for d in res["dumps"]["alone"]}
    batch = {tuple(d["grid"]): d for d in res["dumps"]["batch"]}
    settings = Settings("tango", {})
    for grid, a in alone.items():
        b = batch[grid]
        assert torch.equal(a["features"], b["features"]), grid  # each video encoded alone, in the batch too
        assert (a["saliency"] is None) == (b["saliency"] is None)
        if a["saliency"] is not None:
            assert torch.equal(a["saliency"], b["saliency"]), grid
        assert torch.equal(a["index"], b["index"]), grid
        assert a["chunks"] == b["chunks"] == (None if mode == "tango" else [min(2, grid[0] - s) for s in range(0, grid[0], 2)])
        T, H, W = grid
        assert len(b["index"]) == kept_count(settings, H * W, T, 1 - RATE)
