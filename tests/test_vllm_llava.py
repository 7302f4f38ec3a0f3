"""LLaVA-OneVision served pruned through vLLM (tango_prune.integrations.vllm.llava_ov).

The checks run in .venv-vllm (vLLM's CPU build) as subprocesses of tests/vllm/check_llava.py on a tiny random
checkpoint, offline: one engine as shipped ("stock"), one with our class registered but no method ("unset"), one
pruning with Tango at --video-pruning-rate 0.9 ("tango", which also runs our HF adapter on the same weights),
that one again as a server runs it ("served": the plugin's entry point, engine and worker processes), and chunk by
chunk ("chunked": TANGO_PRUNE_OPTIONS chunk_frames=3, against our HF adapter chunked alike). They
are skipped when .venv-vllm is absent (scripts/setup_vllm.sh builds it), and fail instead with TANGO_REQUIRE_VLLM=1
or TANGO_REQUIRE_ALL=1 (tests/vllm_helpers.py need_vllm). The checkpoint is the session's; the four runs start
together when the module starts (tests/vllm_helpers.py).
"""
from __future__ import annotations

import pytest

from tests.vllm_helpers import SCRIPTS, RunCache, replay_chunks

SCRIPT = SCRIPTS / "check_llava.py"
MODES = ("stock", "unset", "tango", "served", "chunked")
FRAMES, PER_FRAME, TEXT_TOKENS, VIDEO_ID = 8, 16, 8, 398  # tests/vllm/tiny_llava.py's video and prompt
KEPT = round(0.1 * FRAMES * PER_FRAME)  # retention 1 - 0.9, exact budget


@pytest.fixture(scope="module")
def runs(vllm_ckpts, tmp_path_factory) -> dict:
    """The four engines' results, keyed by mode (check_llava.py sets each mode's plugin switches itself)."""
    ckpt = vllm_ckpts["llava_ov"]
    cache = RunCache(tmp_path_factory.mktemp("vllm_llava"))
    for mode in MODES:
        cache.start(mode, [SCRIPT, "run", ckpt, mode, cache.out(mode)], timeout=300)
    out = {mode: cache.get(mode) for mode in MODES}
    out["dumps"] = {m: sorted(out[m]["dump"].glob("*.pt")) for m in ("tango", "served", "chunked")}
    return out


def _split(ids: list[int]) -> tuple[int, list[int]]:
    return sum(i == VIDEO_ID for i in ids), [i for i in ids if i != VIDEO_ID]


def test_registration_resolves_to_our_class(runs):
    assert runs["stock"]["model_class"] == "LlavaOnevisionForConditionalGeneration"
    assert runs["unset"]["model_class"] == runs["tango"]["model_class"] == "TangoLlavaOnevision"
    # only a pruning instance asks vLLM's (GPU) runner for one video per encoder call, as EVS models do
    assert (runs["stock"]["says_prunes"], runs["unset"]["says_prunes"], runs["tango"]["says_prunes"]) == (False, False, True)


def test_prompt_reserves_kept_plus_newline(runs):
    """(1) The video's placeholder run is K kept + 1 newline; the text around it is untouched."""
    t = runs["tango"]
    assert t["kept_counts"][0] == KEPT
    n_video, text = _split(t["prompt_ids"])
    assert n_video == KEPT + 1
    assert len(t["prompt_ids"]) == TEXT_TOKENS + KEPT + 1
    assert text == _split(runs["stock"]["prompt_ids"])[1]
    assert _split(runs["stock"]["prompt_ids"])[0] == FRAMES * PER_FRAME + 1 == t["hf_video_tokens"]


def _two_runs(ids: list[int], k1: int, k2: int) -> bool:
    first = ids.index(VIDEO_ID)
    second = ids.index(VIDEO_ID, first + k1 + 1)
    return ids[first : first + k1 + 1] == [VIDEO_ID] * (k1 + 1) and ids[first + k1 + 1] != VIDEO_ID \
        and ids[second : second + k2 + 1] == [VIDEO_ID] * (k2 + 1) and _split(ids)[0] == k1 + k2 + 2


def test_two_videos_in_one_prompt(runs):
    """Two new videos in one prompt, of one length and of two lengths (8 and 4 frames): each reserves its own K + 1
    and each is pruned as our pruner prunes it. vLLM's CPU runner batches them (its GPU runner would encode one
    video per call for a model that says it prunes): one (2, T, ...) tensor, then a list, so both branches run."""
    t, stock = runs["tango"], runs["stock"]
    k8, k4 = t["kept_counts"]
    assert (k8, k4) == (KEPT, round(0.1 * (FRAMES // 2) * PER_FRAME))
    assert _two_runs(t["same_prompt_ids"], k8, k8) and _two_runs(t["two_prompt_ids"], k8, k4)
    assert _split(t["same_prompt_ids"])[1] == _split(stock["same_prompt_ids"])[1]
    assert t["same_kept"] == [k8, k8] and all(t["same_agree"])
    assert t["two_kept"] == [k8, k4] and all(t["two_agree"])
    assert t["tower_call_frames"] == [FRAMES, 2 * FRAMES, FRAMES + FRAMES // 2]


def test_switches(runs):
    """Pruning is on only with a method and a rate > 0 (rate 0 or unset, or no method: stock)."""
    assert runs["tango"]["switches"] == {"rate0": True, "rate_none": True, "unset": True, "on": True}


def test_kept_indices_match_our_pruner(runs):
    """(2) vLLM kept what our pruner keeps on the pooled embeddings and saliency the model computed, and those equal
    our HF adapter's (same tower, same pooling, same saliency source)."""
    t = runs["tango"]
    assert len(t["vllm_index"]) == KEPT
    assert t["vllm_index"] == t["pruner_on_vllm_inputs_index"]
    assert t["features_maxdiff"] < 1e-5 and t["saliency_maxdiff"] < 1e-6
    assert t["saliency_source"] == "attention-received"  # SigLIP has no CLS and LLaVA ships no MAP head
    assert t["vllm_index"] == t["hf_index"]
    assert t["grid"] == [FRAMES, 4, 4]


def test_debug_dump(runs):
    """TANGO_PRUNE_DEBUG_DIR (the Qwen classes' dump) records every video the engine pruned, in their format."""
    import torch

    records = [torch.load(p, weights_only=False) for p in runs["dumps"]["tango"]]
    assert len(records) == 5  # one video, two of one length, two of two lengths
    assert records[0]["index"].tolist() == runs["tango"]["vllm_index"]
    assert records[0]["saliency_source"] == "attention-received" and records[0]["retention"] == pytest.approx(0.1)


def test_served_through_the_plugin(runs):
    """As a server runs it (the entry-point plugin in every process, engine and worker in their own processes):
    the same prompts and the same first-token log-probs as the in-process engine, the same kept tokens."""
    import torch

    s, t = runs["served"], runs["tango"]
    for key in ("prompt_ids", "same_prompt_ids", "two_prompt_ids"):
        assert s[key] == t[key], key
    assert [i for i, _ in s["top5"]] == [i for i, _ in t["top5"]]
    assert [v for _, v in s["top5"]] == pytest.approx([v for _, v in t["top5"]], abs=1e-5)
    records = [torch.load(p, weights_only=False) for p in runs["dumps"]["served"]]
    assert len(records) == 5 and records[0]["index"].tolist() == t["vllm_index"]


def test_map_head_saliency_matches_hf(runs):
    """saliency="map-head" with siglip_head=DIR (the release's source for LLaVA-OV): the model's pooled saliency
    equals the HF adapter's (the hook catches the feature layer's output, as HF's hidden_states[idx])."""
    m = runs["tango"]["map_head"]
    assert m["source"] == "siglip-map-head"
    assert m["features_maxdiff"] < 1e-5 and m["saliency_maxdiff"] < 1e-3 * m["saliency_spread"]


def test_first_token_logprobs_match_hf(runs):
    """(3) The first generated token's top-5 log-probs equal the HF adapter's on the same weights (fp32)."""
    t = runs["tango"]
    assert [i for i, _ in t["top5"]] == [i for i, _ in t["hf_top5"]]
    for (_, a), (_, b) in zip(t["top5"], t["hf_top5"]):
        assert a == pytest.approx(b, abs=1e-4)


def test_unset_method_is_stock(runs):
    """(4) Registered but with TANGO_PRUNE_METHOD unset, the engine is stock vLLM (the rate is ignored, as stock
    LLaVA-OV ignores it)."""
    s, u = runs["stock"], runs["unset"]
    assert u["prompt_ids"] == s["prompt_ids"] and u["same_prompt_ids"] == s["same_prompt_ids"]
    assert u["top5"] == s["top5"]


def test_chunked_encodes_chunk_by_chunk_and_matches_hf(runs):
    """chunk_frames=3: the tower ran on 3 + 3 + 2 frames (then 3 + 3 + 2 and 3 + 1 for two videos of two lengths in
    one prompt), the prompt reserved what the whole-video path reserves, each video kept what our stream keeps on the
    chunks it was given, and the kept set and first-token top 5 equal our HF adapter's with chunk_frames=3."""
    import torch

    c, t = runs["chunked"], runs["tango"]
    assert c["tower_call_frames"] == [3, 3, 2] and c["all_tower_call_frames"] == [3, 3, 2, 3, 3, 2, 3, 1]
    assert c["prompt_ids"] == t["prompt_ids"] and c["two_prompt_ids"] == t["two_prompt_ids"]
    records = [torch.load(p, weights_only=False) for p in runs["dumps"]["chunked"]]
    assert [r["chunks"] for r in records] == [[3, 3, 2], [3, 3, 2], [3, 1]]
    for r in records:
        assert torch.equal(replay_chunks(r, 0.1, 3).index, r["index"])
    assert records[0]["index"].tolist() == c["hf_index"] and len(c["hf_index"]) == KEPT
    assert [i for i, _ in c["top5"]] == [i for i, _ in c["hf_top5"]]
    assert [v for _, v in c["top5"]] == pytest.approx([v for _, v in c["hf_top5"]], abs=1e-4)
