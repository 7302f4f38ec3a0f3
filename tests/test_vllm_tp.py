"""The vLLM plugin under tensor parallelism: ``tensor_parallel_size=2`` gives what one process gives.

vLLM splits the vision tower's attention heads across the tensor-parallel ranks, so each worker sees only its own
heads' queries and keys; the saliency (Qwen's per-frame global query, LLaVA-OV's attention received) sums heads and
must be all-reduced across ranks, or each rank would score, and keep, other tokens. One engine per family and size
(tests/vllm/tp_check.py): 4 video requests of different frame counts and grids in one ``generate`` call, Tango at
rate 0.9, on the tiny checkpoints (vision towers of 2 heads: 1 per rank at tp 2; the tests assert the split).
Families: Qwen2.5-VL, Qwen3-VL and LLaVA-OV, the three towers the plugin reads q/k from. Qwen3.5 ran too until the
runs were shared; it keeps Qwen3-VL's tower and the same mixin (integrations/vllm/qwen3_5.py), so its tower under tp
is Qwen3-VL's, and its hybrid LLM under tp is vLLM's code, fed as at tp 1.
Compared, tp 2 against tp 1 on the same checkpoint and videos: the prompt ids, the greedy tokens and their top-5
log-probs, and per video (the workers' TANGO_PRUNE_DEBUG_DIR records, both ranks) the saliency source, the saliency
and the kept indices. Also ``mm_encoder_tp_mode="data"`` (the tower replicated, each rank encoding whole videos):
the plugin falls back to the feature saliency, logged. And Qwen3-VL chunk by chunk (``chunk_frames`` 2): each chunk's
saliency all-reduced alike on both ranks, so both close the stream's windows alike (without the all-reduce both of
its tests fail: shown in a copy of the source).

vLLM's CPU backend binds each worker's OpenMP threads to its own cores: on a 2-core machine tp 2 stops at start-up
("Not enough allowed NUMA nodes to bind threads of 2 local CPUWorkers") unless VLLM_CPU_OMP_THREADS_BIND names one
core per rank ("0|1"; here the first two cores this process may use). The runs start together when the module starts
(tests/vllm_helpers.py):
    .venv/bin/python -m pytest tests/test_vllm_tp.py
"""
from __future__ import annotations

import os
import re
from collections import defaultdict

import pytest
import torch

from tango_prune import VideoTokens
from tango_prune.integrations.vllm.settings import Settings, kept_count, make_pruner
from tests.vllm_helpers import SCRIPTS, RunCache, replay_chunks

RATE = 0.9
N = 4  # requests in the one generate call: 4 grids of 2-14 frames (tests/vllm/batch_check.py SHAPES)
FAMILIES = ["qwen2_5_vl", "qwen3_vl", "llava_ov"]
# the saliency each family's tower gives on these checkpoints: never the feature fall-back
SOURCE = {"qwen2_5_vl": "qwen-global-query", "qwen3_vl": "qwen-global-query", "llava_ov": "attention-received"}  # LLaVA-OV without a SigLIP head, no CLS token: attention received
VIDEO_TOKEN = {"llava_ov": 398}  # zoo.TINY_IDS["video"]; the Qwen checkpoints' <|video_pad|> (tests/vllm/tiny.py)
QWEN_VIDEO_TOKEN = 262
# tp 1 vs tp 2 (fp32), measured: log-probs within 4.8e-7, saliency within 3.7e-9 (values ~1e-2), tower features
# within 6e-8. The bounds sit ~20x above those. A rank without the all-reduce scores with half the heads: its saliency
# is off by ~1e-2
LOGPROB_TOL = 1e-5
SALIENCY_TOL = 1e-7
FALLBACK_DP = "feature-distinctiveness (data-parallel vision tower)"
# a fallback changes the kept tokens, so its log line says so (at WARNING, vLLM's default level shows it)
FALLBACK_NOTE = " (not the vision tower's attention: the kept tokens differ from the default's)"


def bind_two_cores() -> str:
    """VLLM_CPU_OMP_THREADS_BIND for 2 ranks: one core each, the first two this process may run on."""
    cpus = sorted(os.sched_getaffinity(0))
    return f"{cpus[0]}|{cpus[1 % len(cpus)]}"


# variants: "data" = mm_encoder_tp_mode data; "chunked" = TANGO_PRUNE_OPTIONS chunk_frames 2 (the tower a chunk at a
# time: the ranks must all-reduce each chunk's saliency alike and close the stream's windows alike)
# "stage" = TANGO_PRUNE_OPTIONS encoder (Qwen2.5-VL: window layers, fused norm; Qwen3-VL: deepstack taps; LLaVA-OV's
# SigLIP; +5 s to this file's 120 s on a 2-core AMD EPYC, the runs sharing its pool): the computed rows'
# attention and MLP on each rank's heads, the ranks' schedules decided on all-reduced gate states
STAGE = '{"encoder": {"tau": 0.5, "gate_layer": 1, "key_share": 1.0, "halo": 0}}'
STAGED = ["qwen2_5_vl", "qwen3_vl", "llava_ov"]  # vLLM's Qwen blocks (window layers + fused norm; deepstack taps), LLaVA-OV's SigLIP layers
RUNS = [(f, tp, None) for f in FAMILIES for tp in (1, 2)] + [("qwen2_5_vl", 2, "data")] + \
    [("qwen3_vl", tp, "chunked") for tp in (1, 2)] + [(f, tp, "stage") for f in STAGED for tp in (1, 2)]
CASES = [(f, None) for f in FAMILIES] + [("qwen3_vl", "chunked")] + [(f, "stage") for f in STAGED]


@pytest.fixture(scope="module")
def runs(vllm_ckpts, tmp_path_factory):
    vllm_ckpts.prefetch(*FAMILIES)
    cache = RunCache(tmp_path_factory.mktemp("vllm-tp-runs"))

    def start(family: str, tp: int, variant: str | None = None) -> str:
        key = f"{family}-tp{tp}" + (f"-{variant}" if variant else "")
        args = [SCRIPTS / "tp_check.py", "--family", family, "--model", vllm_ckpts[family], "--out", cache.out(key),
                "--tp", str(tp), "--rate", str(RATE), "--n", str(N)]
        args += ["--mm-encoder-tp-mode", variant] if variant == "data" else []
        env = {"TANGO_PRUNE_METHOD": "tango"}
        if variant == "chunked":
            env["TANGO_PRUNE_OPTIONS"] = '{"chunk_frames": 2}'
        if variant == "stage":
            env["TANGO_PRUNE_OPTIONS"] = STAGE
        if tp > 1:
            env["VLLM_CPU_OMP_THREADS_BIND"] = bind_two_cores()
        cache.start(key, args, env)
        return key

    for run in RUNS:
        start(*run)

    def get(family: str, tp: int, variant: str | None = None) -> dict:
        res = cache.get(start(family, tp, variant))
        if "records" not in res:  # per worker process: grid -> its last record (every request has its own grid)
            per_pid: dict[int, dict] = defaultdict(dict)
            for f in sorted(res["dump"].glob("*.pt")):
                d = torch.load(f)
                per_pid[int(f.name.split("-")[0])][tuple(d["grid"])] = d
            res["records"] = dict(per_pid)
        return res

    return get


def expected_video_tokens(family: str, grid) -> int:
    T, H, W = grid
    k = kept_count(Settings("tango", {}), H * W, T, 1.0 - RATE)
    return k + 1 if family == "llava_ov" else k  # LLaVA-OV: the kept tokens, then one newline


def rank_records(res: dict) -> list[dict]:
    """Each rank's records (grid -> record), in rank order; every rank must have written some."""
    pids = [r["pid"] for r in sorted(res["ranks"], key=lambda r: r["rank"])]
    missing = [p for p in pids if p not in res["records"]]
    assert not missing, f"ranks with pids {missing} wrote no debug record (records from {sorted(res['records'])})"
    return [res["records"][p] for p in pids]


def logged_sources(log: str) -> dict[int, set[str]]:
    """tp rank -> the saliency sources its worker logged ("(Worker_TP1 pid=..) INFO .. saliency source: X")."""
    out: dict[int, set[str]] = defaultdict(set)
    for m in re.finditer(r"\(Worker_TP(\d+) pid=\d+\).*tango-prune: saliency source: (.+)", log):
        out[int(m[1])].add(m[2].strip())
    return dict(out)


@pytest.mark.parametrize("family", FAMILIES)
def test_vision_tower_is_sharded(runs, family):
    """The premise: at tp 2 the tower's attention really is split, one head of the two on each rank (this rank's
    fused qkv projection half as wide as tp 1's), and the plugin's class runs on both ranks."""
    one, two = runs(family, 1)["ranks"], runs(family, 2)["ranks"]
    assert len(one) == 1 and one[0]["local_heads"] == one[0]["vision_heads"] and one[0]["world"] == 1
    assert sorted(r["rank"] for r in two) == [0, 1] and len({r["pid"] for r in two}) == 2
    for r in two:
        assert r["world"] == 2 and r["attn_tp_size"] == 2 and not r["data_parallel_tower"], r
        assert r["vision_heads"] % 2 == 0 and r["local_heads"] == r["vision_heads"] // 2 >= 1, r
        assert r["qkv_width"] == 3 * r["local_heads"] * r["head_dim"] == one[0]["qkv_width"] // 2, r
        assert r["model_class"] == one[0]["model_class"] and r["model_class"].startswith("Tango"), r


@pytest.mark.parametrize("family, variant", CASES)
def test_tp2_answers_equal_tp1(runs, family, variant):
    """tp 2 gives every request of the batch the prompt (so the kept count), the greedy tokens and the top-5
    log-probs of tp 1; each video's prompt holds exactly the kept count of its grid (pruning did happen)."""
    one, two = runs(family, 1, variant), runs(family, 2, variant)
    assert len(one["requests"]) == len(two["requests"]) == N
    grids = rank_records(two)[0]
    token = VIDEO_TOKEN.get(family, QWEN_VIDEO_TOKEN)
    counts = sorted(r["prompt_token_ids"].count(token) for r in two["requests"])
    assert counts == sorted(expected_video_tokens(family, g) for g in grids), (counts, sorted(grids))
    for i, (a, b) in enumerate(zip(one["requests"], two["requests"])):
        assert a["prompt_token_ids"] == b["prompt_token_ids"], f"request {i}: prompts differ"
        assert a["generated"] == b["generated"], f"request {i}: tp 1 {a['generated']} vs tp 2 {b['generated']}"
        for step, (sa, sb) in enumerate(zip(a["top5"], b["top5"])):
            assert [t for t, _ in sa] == [t for t, _ in sb], f"request {i} step {step}"
            gap = max(abs(x - y) for (_, x), (_, y) in zip(sa, sb))
            assert gap <= LOGPROB_TOL, f"request {i} step {step}: {sa} vs {sb}"


def ours(d: dict):
    """What our pruner keeps on a record's inputs: whole, or pushed to the stream in the recorded chunks."""
    if d["chunks"] is None:
        return make_pruner(Settings("tango", {}), 1.0 - RATE)(VideoTokens(d["features"], d["saliency"], d["grid"],
                                                                           d["timestamps"]))
    return replay_chunks(d, 1.0 - RATE, 2)


@pytest.mark.parametrize("family, variant", CASES)
def test_tp2_keeps_tp1_tokens(runs, family, variant):
    """Per video, on both ranks: the tower's own saliency (never the feature fall-back), equal across ranks and to
    tp 1's, and the kept indices of tp 1, which are our pruner's on the recorded inputs (chunked: the stream's on the
    recorded chunks). Without the all-reduce each rank scores with its own head only: this fails (shown by removing
    it in a copy of the source)."""
    one, two = runs(family, 1, variant), runs(family, 2, variant)
    (ref,) = rank_records(one)
    ranks = rank_records(two)
    assert len(ranks) == 2 and len(ref) == N and all(set(r) == set(ref) for r in ranks), \
        (sorted(ref), [sorted(r) for r in ranks])
    if family != "llava_ov":  # the Qwen classes log their saliency source once per process: each rank does
        assert logged_sources(two["log"]) == {0: {SOURCE[family]}, 1: {SOURCE[family]}}
    tol = SALIENCY_TOL
    for grid, a in ref.items():
        assert (a["chunks"] is not None) == (variant == "chunked"), (grid, a["chunks"])
        assert a["saliency_source"] == SOURCE[family] and a["saliency"] is not None, (grid, a["saliency_source"])
        for rank, recs in enumerate(ranks):
            b = recs[grid]
            where = f"grid {grid}, rank {rank}"
            assert b["saliency_source"] == SOURCE[family] and b["saliency"] is not None, (where, b["saliency_source"])
            gap = float((b["saliency"] - a["saliency"]).abs().max())
            assert gap <= tol, f"{where}: saliency differs from tp 1 by {gap:.2e} (values ~{a['saliency'].mean():.1e})"
            assert torch.equal(b["index"], a["index"]), f"{where}: kept indices differ from tp 1's"
            assert b["chunks"] == a["chunks"], where
            assert torch.equal(ours(b).index, b["index"]), f"{where}: not our pruner's selection"
        # the two ranks all-reduced one saliency: rank 1's equals rank 0's exactly
        assert torch.equal(ranks[1][grid]["saliency"], ranks[0][grid]["saliency"]), f"grid {grid}: ranks scored differently"


@pytest.mark.parametrize("family", STAGED)
def test_encoder_stage_decides_alike_on_both_ranks(runs, family):
    """The encoder stage under tp 2: each rank logs, per video, the share of tokens computed past the gate and the
    key temporal patches (frames); both ranks' schedules equal tp 1's, and some rows were computed beside reused ones
    (the partial path ran on each rank's heads)."""
    def stages(log: str) -> dict[int, list[tuple[str, str]]]:
        out: dict[int, list] = defaultdict(list)
        for m in re.finditer(r"\((?:Worker_TP(\d+) |[A-Za-z]+ )?pid=\d+\).*encoder stage: (\S+ x \S+ x \S+ video|\d+ frames), "
                             r"(\S+) of (?:its|their) tokens computed past the gate, (\d+) key", log):
            out[int(m[1] or 0)].append((m[2], m[3], m[4]))
        return dict(out)

    one, two = stages(runs(family, 1, "stage")["log"]), stages(runs(family, 2, "stage")["log"])
    assert len(one[0]) >= N and sorted(two) == [0, 1], (one, two)
    assert two[0] == two[1] == one[0], (one, two)
    assert any(0 < float(share) < 1 for _, share, _ in two[0]), two[0]


def test_data_parallel_tower_falls_back_to_features(runs):
    """``mm_encoder_tp_mode="data"`` (Qwen2.5-VL, tp 2): the tower is not split (all heads on each rank) and each
    rank encodes whole videos; the plugin does not read q/k there and scores by features on both ranks, logged.
    Counts, hence prompts, stay those of tp 1; the kept set is our pruner's without saliency."""
    one, dp = runs("qwen2_5_vl", 1), runs("qwen2_5_vl", 2, "data")
    for r in dp["ranks"]:
        assert r["data_parallel_tower"] and r["attn_tp_size"] == 1 and r["local_heads"] == r["vision_heads"], r
    assert [r["prompt_token_ids"] for r in dp["requests"]] == [r["prompt_token_ids"] for r in one["requests"]]
    assert logged_sources(dp["log"]) == {0: {FALLBACK_DP + FALLBACK_NOTE}, 1: {FALLBACK_DP + FALLBACK_NOTE}}
    prune = make_pruner(Settings("tango", {}), 1.0 - RATE)
    ranks = rank_records(dp)
    assert len(ranks) == 2 and all(len(r) == N for r in ranks)
    for recs in ranks:
        for grid, d in recs.items():
            assert d["saliency_source"] == FALLBACK_DP and d["saliency"] is None, (grid, d["saliency_source"])
            out = prune(VideoTokens(d["features"], None, d["grid"], d["timestamps"]))
            assert torch.equal(out.index, d["index"]), grid
    assert all(torch.equal(ranks[1][g]["index"], ranks[0][g]["index"]) for g in ranks[0])  # rank 1 kept rank 0's
