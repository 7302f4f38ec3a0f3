"""Chunk by chunk through vLLM (issue 37): ``TANGO_PRUNE_OPTIONS={"chunk_frames": N}`` runs each video's tower N
temporal patches at a time and prunes each chunk as it comes (stream.TangoStream), holding only kept rows.

Engine runs (tests/vllm/engine_check.py, the reference release, shared with tests/test_vllm.py): Qwen2.5-VL and
Qwen3-VL (deepstack levels carried along), 16 random frames = 8 temporal patches encoded as 3 + 3 + 2, Tango at rate
0.9, transformers' side chunked the same way (``apply(..., chunk_frames=3)``). Batch = alone for the chunked path:
tests/test_vllm_batch.py.
"""
from __future__ import annotations

import pytest
import torch

from tango_prune.integrations.vllm.settings import Settings, kept_count
from tango_prune.stream import TangoStream
from tests.vllm_helpers import RATE, replay_chunks

GRID = (8, 8, 8)
FAMILIES = ("qwen2_5_vl", "qwen3_vl")
CHUNKS = [3, 3, 2]


@pytest.fixture(scope="module")
def runs(vllm_runs):
    return vllm_runs["0.32"].prefetch(*[(f, m) for f in FAMILIES for m in ("tango-chunked", "tango")])


def record(res) -> dict:
    recs = [d for d in (torch.load(f) for f in sorted(res["dump"].glob("*.pt"))) if tuple(d["grid"]) == GRID]
    assert len(recs) == 1, f"{len(recs)} debug records of grid {GRID} for one video"
    return recs[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_tower_runs_chunk_by_chunk_and_equals_the_whole_call(runs, family):
    """The tower ran once per chunk (3 + 3 + 2 temporal patches), and the rows it gave are the whole-video call's
    (its attention never crosses a temporal patch): the features and saliency the stream saw equal the unchunked
    run's to float32 rounding."""
    chunked, whole = record(runs.run(family, "tango-chunked")), record(runs.run(family, "tango"))
    assert chunked["chunks"] == CHUNKS and whole["chunks"] is None
    assert chunked["saliency_source"] == "qwen-global-query"
    torch.testing.assert_close(chunked["features"], whole["features"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked["saliency"], whole["saliency"], rtol=1e-5, atol=1e-6)
    assert torch.equal(chunked["timestamps"], whole["timestamps"])


@pytest.mark.parametrize("family", FAMILIES)
def test_kept_set_is_the_whole_videos_where_decisions_are_local(runs, family):
    """Random frames: every temporal patch is its own segment, so each segment's pruning is local to its chunk; what
    is not local is the exact budget (the plugin must keep exactly the reserved count): the whole video fits its
    surplus or deficit by saliency anywhere, the stream inside each closed window against a running target. So the
    kept sets share all but that fit: measured Jaccard 0.96 (Qwen2.5-VL) and 0.92 (Qwen3-VL), the same count."""
    chunked, whole = record(runs.run(family, "tango-chunked")), record(runs.run(family, "tango"))
    a, b = set(chunked["index"].tolist()), set(whole["index"].tolist())
    assert len(a) == len(b) == 51 and len(a & b) / len(a | b) >= 0.9


@pytest.mark.parametrize("family", FAMILIES)
def test_kept_tokens_are_the_streams(runs, family):
    """The worker kept exactly what our stream keeps when the recorded chunks are pushed in order, at the count the
    prompt reserved (the exact budget over the whole video)."""
    d = record(runs.run(family, "tango-chunked"))
    out = replay_chunks(d, 1.0 - RATE, 3)
    assert torch.equal(out.index, d["index"]) and torch.equal(out.features, d["kept_features"])
    assert len(d["index"]) == kept_count(Settings("tango", {}), GRID[1] * GRID[2], GRID[0], 1.0 - RATE) == 51


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_matches_hf_chunked(runs, family):
    """vLLM chunked = transformers + ``apply(..., chunk_frames=3)`` on the same weights and frames: the same kept set,
    the same first-token top 5, log-probs within 1e-5 (fp32; Qwen3-VL: deepstack carried alike)."""
    res = runs.run(family, "tango-chunked")
    v, h = res["vllm"], res["hf"]
    assert h["stats"][0]["tokens_kept"] == v["video_tokens"] == 51
    assert record(res)["index"].tolist() == h["index"]
    assert [t for t, _ in v["top5"]] == [t for t, _ in h["top5"]]
    assert max(abs(a - b) for (_, a), (_, b) in zip(v["top5"], h["top5"])) < 1e-5
    assert v["prompt_token_ids"] == runs.run(family, "tango")["vllm"]["prompt_token_ids"]  # same K reserved


def test_bad_chunk_options_stop_startup_in_one_line():
    from tango_prune.integrations.vllm.settings import read_settings

    for opts, needle in [('{"chunk_frames": 0}', "chunk_frames=0 is invalid"),
                         ('{"max_carry": 8}', "max_carry without chunk_frames")]:
        with pytest.raises(ValueError, match=needle) as info:
            read_settings({"TANGO_PRUNE_METHOD": "tango", "TANGO_PRUNE_OPTIONS": opts})
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="method 'topk' needs the whole video"):
        read_settings({"TANGO_PRUNE_METHOD": "topk", "TANGO_PRUNE_OPTIONS": '{"chunk_frames": 2}'})


def test_stream_of_settings_is_tango_at_the_exact_budget():
    s = Settings("tango", {"chunk_frames": 4, "max_carry": 32, "context_ratio": 0.3})
    stream = s.make_stream(0.25)
    assert isinstance(stream, TangoStream) and stream.max_carry == 32
    assert stream.cfg.budget == "exact" and stream.cfg.context_ratio == 0.3 and stream.cfg.retention == 0.25


@pytest.mark.parametrize("family", FAMILIES)
def test_the_same_video_asked_twice_gets_the_same_answer(runs, family):
    """Asked again in the same engine (vLLM's defaults: prefix caching on, the encoder cache keyed by the media), the
    chunked request gets the first ask's prompt, greedy tokens and top-5 log-probs exactly."""
    v = runs.run(family, "tango-chunked")["vllm"]
    again = v["again"]
    assert again["prompt_token_ids"] == v["prompt_token_ids"] and again["generated"] == v["generated"]
    assert again["top5"] == v["top5"]
