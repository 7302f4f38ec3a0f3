"""The encoder stage inside vLLM's Qwen towers (issue 36; integrations/vllm/encoder_stage.py):
``TANGO_PRUNE_OPTIONS='{"encoder": ...}'`` with Tango at rate 0.9.

One engine per family (tests/vllm/stage_check.py) on the tiny checkpoints: Qwen2.5-VL (window layers, fused norm),
Qwen3-VL (deepstack taps), Qwen3.5 (bfloat16), and LLaVA-OV's SigLIP (a frame for a temporal patch;
tests/vllm/stage_check_llava.py). On vLLM's own tower modules, every block past the gate staged:
repeated temporal patches = the stock tower bit for bit; tau 1 = stock; the computed rows = vLLM's stock block on
the composite temporal patch at every block (and the last block's queries and keys, which the saliency reads); two
videos of two sizes in one call = each alone. Through the engine: a repeated-frames video with the stage = the same
frames without it, and a video asked twice = the first answer (vLLM's defaults: prefix caching and the encoder cache
on). Measured: every comparison exact (0.0). A copy without the window mask fails the Qwen2.5-VL composite (block 0:
relative 9e-5), one whose computed rows' keys are not rotated fails it in all three (keys off by 16-53). Tensor
parallel 2 = 1 with the stage: tests/test_vllm_tp.py.
"""
from __future__ import annotations

import json
import re

import pytest
import torch

from tests.vllm_helpers import SCRIPTS, RunCache

FAMILIES = ["qwen2_5_vl", "qwen3_vl", "qwen3_5"]
RATE = 0.9
# random frames share little: gate after block 0, tau 0.5, each token alone (no halo), no patch promoted to key: the
# engine's own requests compute rows beside reused ones (the tower checks set their own schedules)
OPTIONS = '{"encoder": {"tau": 0.5, "gate_layer": 1, "key_share": 1.0, "halo": 0}}'
# with chunk_frames 2 (temporal patches): a non-key patch reuses nearly all it can (tau 0), no patch promoted to a key
CHUNKED = '{"encoder": {"tau": 0.0, "gate_layer": 1, "key_share": 1.0, "halo": 0}, "chunk_frames": 2}'


@pytest.fixture(scope="module")
def runs(vllm_ckpts, tmp_path_factory):
    cache = RunCache(tmp_path_factory.mktemp("vllm-stage-runs"))
    vllm_ckpts.prefetch(*FAMILIES)

    def key(family: str) -> str:
        cache.start(family, [SCRIPTS / "stage_check.py", "--family", family, "--model", vllm_ckpts[family],
                             "--out", cache.out(family), "--rate", str(RATE)],
                    {"TANGO_PRUNE_METHOD": "tango", "TANGO_PRUNE_OPTIONS": OPTIONS})
        return family

    def key_llava() -> str:
        cache.start("llava_ov", [SCRIPTS / "stage_check_llava.py", vllm_ckpts["llava_ov"], cache.out("llava_ov")],
                    {"TANGO_PRUNE_METHOD": "tango", "TANGO_PRUNE_OPTIONS": OPTIONS})
        return "llava_ov"

    def key_bench() -> str:  # bench/vllm_encoder.py's engine side on the tiny Qwen2.5-VL: two given patterns
        spec = cache.root / "bench-spec.json"
        if not spec.exists():
            stages = []
            for i, share in enumerate((0.5, 1.0)):
                pattern = torch.rand(8, 256, generator=torch.Generator().manual_seed(i)) < share
                pattern[0] = True
                torch.save(pattern, cache.root / f"pattern-{i}.pt")
                stages.append({"label": f"p{i}", "encoder": {"tau": 0.95, "gate_layer": 0, "key_share": 0.5},
                               "pattern": str(cache.root / f"pattern-{i}.pt"), "computed": float(pattern.float().mean())})
            spec.write_text(json.dumps({"frames": 16, "px": 224, "rate": RATE, "repeats": 1, "stages": stages}))
        cache.start("bench", ["-m", "tango_prune.bench.vllm_encoder", "time", vllm_ckpts["qwen2_5_vl"], spec,
                              "--json", cache.out("bench")])
        return "bench"

    def key_chunked() -> str:  # Qwen3-VL (deepstack levels ride along the stream) with chunk_frames
        cache.start("chunked", [SCRIPTS / "stage_check.py", "--family", "qwen3_vl", "--model", vllm_ckpts["qwen3_vl"],
                                "--out", cache.out("chunked"), "--rate", str(RATE), "--chunked"],
                    {"TANGO_PRUNE_METHOD": "tango", "TANGO_PRUNE_OPTIONS": CHUNKED})
        return "chunked"

    def key_llava_chunked() -> str:
        cache.start("llava_chunked", [SCRIPTS / "stage_check_llava.py", vllm_ckpts["llava_ov"],
                                      cache.out("llava_chunked"), "chunked"],
                    # check_llava.py quiets vLLM to WARNING; the stage's per-chunk lines are INFO
                    {"TANGO_PRUNE_METHOD": "tango", "TANGO_PRUNE_OPTIONS": CHUNKED, "VLLM_LOGGING_LEVEL": "INFO"})
        return "llava_chunked"

    for f in FAMILIES:
        key(f)
    key_llava()
    key_bench()
    key_chunked()
    key_llava_chunked()
    keys = {"llava_ov": key_llava, "bench": key_bench, "chunked": key_chunked, "llava_chunked": key_llava_chunked}
    return lambda family: cache.get(keys.get(family, lambda: key(family))())


@pytest.fixture(scope="module")
def llava(runs):
    return runs("llava_ov")


def test_llava_repeated_frames_and_tau_1_give_the_stock_tower(llava):
    """LLaVA-OV's SigLIP (encoder_stage_llava.py): every frame alike, only the key frame computes, and the tower's
    output is stock; tau 1 keeps every frame a key frame: stock."""
    rep, tau1 = llava["tower"]["repeated"], llava["tower"]["tau1"]
    assert rep["diff"] == 0.0 and rep["keys"] == 1 and rep["computed"] == 0.25, rep
    assert tau1["diff"] == 0.0 and tau1["keys"] == 4, tau1


def test_llava_halo_computes_the_square_around_a_change(llava):
    assert llava["tower"]["halo"] == {"square": True, "computed": 9, "others": 0}, llava["tower"]["halo"]


def test_llava_computed_rows_are_the_stock_layer_on_the_composite(llava):
    c = llava["tower"]["composite"]
    assert c["rows"] == 32 and len(c["layer_rel_diff"]) >= 2 and max(c["layer_rel_diff"]) <= 1e-6, c


def test_llava_batch_and_served_answers(llava):
    """Two videos of two lengths in one call = each alone; served, repeated frames answer as without the stage and a
    video asked twice gets its first answer."""
    assert llava["tower"]["batch"]["rows_diff"] == 0.0, llava["tower"]["batch"]
    assert llava["repeated"] == llava["repeated_off"] and llava["random"] == llava["random_again"]


@pytest.mark.parametrize("family", FAMILIES)
def test_repeated_temporal_patches_give_the_stock_tower(runs, family):
    rep = runs(family)["tower"]["repeated"]
    assert rep["equal"] and rep["diff"] == 0.0, rep
    assert rep["keys"] == 1 and rep["computed"] == 0.25, rep  # 4 temporal patches: only the key's rows computed


@pytest.mark.parametrize("family", FAMILIES)
def test_tau_1_is_the_stock_tower(runs, family):
    t = runs(family)["tower"]["tau1"]
    assert t["keys"] == 4 and t["diff"] == 0.0, t


@pytest.mark.parametrize("family", FAMILIES)
def test_computed_rows_are_the_stock_block_on_the_composite(runs, family):
    """At every block past the gate, the rows a dependent temporal patch computes equal vLLM's stock block on the
    composite patch (the key's input where reused, the rows' own where computed), as do the last block's queries and
    keys the saliency reads."""
    c = runs(family)["tower"]["composite"]
    assert c["rows"] == 128 and len(c["block_rel_diff"]) >= 2, c
    assert max(c["block_rel_diff"]) <= 1e-6 and c["q_diff"] <= 1e-6 and c["k_diff"] <= 1e-6, c


@pytest.mark.parametrize("family", FAMILIES)
def test_the_halo_spreads_on_the_image_grid(runs, family):
    """One changed patch with halo 1 computes its 3 x 3 square on the image, whatever order the tower holds rows in
    (Qwen2.5-VL's windows); the unchanged temporal patches compute nothing."""
    got = runs(family)["tower"]["halo"]
    assert got == {"square": True, "computed": 9, "others": 0}, got


@pytest.mark.parametrize("family", FAMILIES)
def test_two_videos_in_one_call_equal_each_alone(runs, family):
    b = runs(family)["tower"]["batch"]
    assert b["rows_diff"] == 0.0 and b["saliency_diff"] == 0.0, b


def same_answer(a: dict, b: dict) -> None:
    assert a["prompt_token_ids"] == b["prompt_token_ids"] and a["generated"] == b["generated"]
    assert a["top5"] == b["top5"]


@pytest.mark.parametrize("family", FAMILIES)
def test_served_repeated_frames_answer_as_without_the_stage(runs, family):
    res = runs(family)
    same_answer(res["repeated"], res["repeated_off"])
    assert res["repeated"]["prompt_token_ids"].count(262) == 51  # pruned: Tango's count for 8 x 8 x 8 at rate 0.9


@pytest.mark.parametrize("family", FAMILIES)
def test_served_video_asked_twice_gets_the_same_answer(runs, family):
    """The stage ran on the engine's own requests with rows computed beside reused ones (its log line per video),
    and the same video asked again (caches on) gets the first answer exactly."""
    res = runs(family)
    same_answer(res["random"], res["random_again"])
    shares = [float(s) for s in re.findall(r"encoder stage: 8 x 16 x 16 video, (\S+) of its tokens computed", res["log"])]
    assert shares and all(0 < s < 1 for s in shares), shares


def test_chunked_stage_starts_each_chunk_at_a_key(runs):
    """Long videos in bounded memory with the stage (Qwen3-VL, chunk_frames 2): each chunk is its own stage call
    whose first temporal patch is a key. Frames alike within each chunk and different across chunks answer exactly
    as the chunked stock tower does (the stage switched off on the model), each chunk logging half its tokens
    computed; a random video asked again gets its first answer."""
    res = runs("chunked")
    same_answer(res["repeated"], res["repeated_off"])
    same_answer(res["random"], res["random_again"])
    shares = [float(s) for s in re.findall(r"encoder stage: 2 x 16 x 16 video, (\S+) of its tokens computed", res["log"])]
    assert len(shares) >= 8 and not re.search(r"encoder stage: 8 x", res["log"]), shares  # per chunk, never whole
    assert shares[:4] == [0.5] * 4, shares  # the video repeated within chunks: each chunk's key patch only
    assert any(0.5 < s < 1 for s in shares[4:]), shares  # the random one: rows computed beside reused ones


def test_llava_chunked_stage_starts_each_chunk_at_a_key_frame(runs):
    """LLaVA-OV's SigLIP with chunk_frames 2: the same as above with a frame for a temporal patch."""
    res = runs("llava_chunked")
    assert res["repeated"]["prompt_ids"] == res["repeated_off"]["prompt_ids"]
    assert res["repeated"]["top5"] == res["repeated_off"]["top5"]
    assert res["random"] == res["random_again"]
    shares = [float(s) for s in re.findall(r"encoder stage: 2 frames, (\S+) of their tokens computed", res["log"])]
    n = len(shares) // 2  # the repeated video's chunks, then the random one's
    assert n >= 2 and not re.search(r"encoder stage: (?!2 frames)\d+ frames", res["log"]), shares
    assert shares[:n] == [0.5] * n and any(0.5 < s < 1 for s in shares[n:]), shares


def test_bad_encoder_options_stop_startup_in_one_line():
    from tango_prune.integrations.vllm.settings import read_settings

    for opts, needle in [('{"encoder": "nope"}', "encoder='nope' is invalid"),
                         ('{"encoder": {"tau": 2}}', "tau must be a cosine similarity"),
                         ('{"encoder": "reuse", "encoder_pattern": "p.pt", "chunk_frames": 4}', "encoder_pattern and chunk_frames"),
                         ('{"encoder_pattern": "p.pt"}', "encoder_pattern without encoder")]:
        with pytest.raises(ValueError, match=needle) as info:
            read_settings({"TANGO_PRUNE_METHOD": "tango", "TANGO_PRUNE_OPTIONS": opts})
        assert "\n" not in str(info.value)
    s = read_settings({"TANGO_PRUNE_METHOD": "tango", "TANGO_PRUNE_OPTIONS": '{"encoder": "reuse:tau=0.9"}'})
    assert s.encoder.tau == 0.9 and s.encoder.gate_layer == 2 and s.method_options == {"budget": "exact"}


def test_bench_engine_side_switches_the_stage_per_request(runs):
    """``bench --engine vllm --encoder``'s engine side (bench/vllm_encoder.py) on the tiny Qwen2.5-VL: Tango alone and
    two given patterns alternating in one engine; the stage ran exactly on the stage requests, on the given patterns
    (their computed shares in the engine's log: warm-up, then one per stage request), never on Tango's."""
    res = runs("bench")
    assert [r["label"] for r in res["rows"]] == ["tango", "p0", "p1"] and res["prompt_tokens"] > 0
    assert len(res["rows"][0]["ttft_all_s"]) == 3 and all(r["vs_tango"] > 0 for r in res["rows"])
    shares = [float(s) for s in re.findall(r"encoder stage: 8 x 16 x 16 video, (\S+) of its tokens", res["log"])]
    want = [r["computed"] for r in res["rows"][1:]]
    assert shares == pytest.approx([want[0], *want], abs=1e-4), (shares, want)
