"""bench --llm-stage: pre-LLM-only rows against rows with the stage inside the LLM, on tiny random configs (seconds)."""
import json

import pytest

pytest.importorskip("transformers")

from tango_prune.bench import archs  # noqa: E402
from tango_prune.bench.e2e_stage import parse_stage  # noqa: E402
from tango_prune.cli import main  # noqa: E402
from tango_prune.models.llm_stage import LLMStage  # noqa: E402

from .test_bench_e2e import FIELDS, TINY_LLM, TINY_QWEN_VIT, TINY_VIT  # noqa: E402

LAYERS = 8  # stage 4/0.5: r_pre = 8 r / (4 + 4 * 0.5) = 4 r / 3
STAGE_FIELDS = FIELDS | {"llm_stage", "pre_llm_retention", "decode_s_per_token", "video_tokens_full", "video_tokens",
                         "video_tokens_after_stage", "llm_tokens", "llm_tokens_after_stage", "mean_share",
                         "ttft_ratio", "prefill_ratio", "decode_ratio"}


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(archs.ARCHS, "tiny-ov", ("llava", TINY_VIT, dict(TINY_LLM, num_hidden_layers=LAYERS)))
    monkeypatch.setitem(archs.ARCHS, "tiny-qwen", ("qwen", TINY_QWEN_VIT, dict(TINY_LLM, num_hidden_layers=LAYERS)))


def bench(tmp_path, *args):
    out = tmp_path / "b.json"
    code = main(["bench", "--frames", "8", "--repeats", "1", "--decode-tokens", "2", "--json", str(out), "--quiet",
                 *args])
    return code, (json.loads(out.read_text()) if code == 0 else None)


def test_rows_with_and_without_the_stage_at_the_same_mean_retention(tiny, tmp_path, capsys):
    # topk keeps exactly round(r N) tokens, so the shares can be checked to the token
    code, out = bench(tmp_path, "--arch", "tiny-ov", "--methods", "none,topk,tango", "--retention", "0.25",
                      "--llm-stage", "4/0.5")
    assert code == 0 and out["llm_stage"] == "4/0.5"
    rows = out["results"]
    assert [(r["method"], r["llm_stage"]) for r in rows] == [
        ("none", None), ("topk", None), ("topk", "4/0.5"), ("tango", None), ("tango", "4/0.5")]
    assert all(STAGE_FIELDS <= set(r) for r in rows)
    none, pre, staged = rows[0], rows[1], rows[2]
    full = none["video_tokens_full"]  # 8 frames of 4 x 4 pooled tokens and the video's newline
    assert full == 8 * 16 + 1 == none["video_tokens"] and none["mean_share"] == 1.0
    # before the LLM: r (pre-LLM only) and the raised r_pre = L r / (K + (L - K) keep) (with the stage)
    assert pre["pre_llm_retention"] == 0.25 and staged["pre_llm_retention"] == pytest.approx(0.25 * 4 / 3)
    assert pre["video_tokens"] == round(0.25 * 128) + 1 and staged["video_tokens"] == round(0.25 * 4 / 3 * 128) + 1
    # after the stage: the kept share of the tokens that entered the LLM; the pre-LLM-only row has no stage
    before = staged["video_tokens"]
    assert staged["video_tokens_after_stage"] == before - round(before * 0.5)
    assert staged["llm_tokens"] - staged["llm_tokens_after_stage"] == round(before * 0.5)
    assert pre["video_tokens_after_stage"] is None and pre["llm_tokens_after_stage"] is None
    # the share averaged over the 8 layers is r for both rows, within a token or two of rounding
    for r in (pre, staged):
        after = r["video_tokens_after_stage"] or r["video_tokens"]
        assert r["mean_share"] == pytest.approx((4 * r["video_tokens"] + 4 * after) / (8 * full))
        assert abs(r["mean_share"] - 0.25) <= 2 / full
    # the same video and tower for every row; the ratio is the pre-LLM-only row's time over the stage row's
    assert len({r["vision_s"] for r in rows}) == 1 and staged["flops_vision"] == pre["flops_vision"]
    assert staged["ttft_ratio"] == pytest.approx(pre["ttft_s"] / staged["ttft_s"])
    assert staged["decode_ratio"] == pytest.approx(pre["decode_s_per_token"] / staged["decode_s_per_token"])
    assert pre["ttft_ratio"] is None and none["speedup"] == pytest.approx(1.0)
    assert rows[4]["video_tokens_after_stage"] == rows[4]["video_tokens"] - round(rows[4]["video_tokens"] * 0.5)
    assert all(r["decode_s_per_token"] > 0 and r["prefill_s"] > 0 for r in rows)
    text = capsys.readouterr().out
    assert "TTFT x" in text and "4/0.5" in text


def test_depth_reduced_run_cuts_the_stage_in_proportion_and_keeps_the_full_depth_retention(tiny, tmp_path):
    code, out = bench(tmp_path, "--arch", "tiny-qwen", "--methods", "tango", "--retention", "0.2", "--llm-stage",
                      "4/0.5", "--layers", "4", "--plot", str(tmp_path / "b.png"))
    assert code == 0 and [r["llm_stage"] for r in out["results"]] == [None, "4/0.5"]
    staged = out["results"][1]
    assert staged["estimated"] and staged["pre_llm_retention"] == pytest.approx(0.2 * 4 / 3)
    assert staged["video_tokens_after_stage"] == staged["video_tokens"] - round(staged["video_tokens"] * 0.5)
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_stage_specs():
    assert parse_stage("llava-video") == LLMStage(18, 0.5, 0.6)
    assert parse_stage("18/0.5") == LLMStage(18, 0.5)
    assert LLMStage(18, 0.5).pre_llm_retention(0.1, 28) == pytest.approx(28 * 0.1 / 23)


@pytest.mark.parametrize("args, needle", [
    (["--llm-stage", "nosuch"], "LAYER/KEEP"),
    (["--llm-stage", "18/x"], "LAYER/KEEP"),
    (["--llm-stage", "4/1.5"], "keep must be in (0, 1]"),
    (["--llm-stage", "0/0.5"], "layer must be an integer >= 1"),
    (["--llm-stage", "8/0.5"], "below tiny-ov's 8 decoder layers"),
    (["--llm-stage", "4/0.5", "--methods", "none"], "add one, e.g. --methods tango"),
    (["--llm-stage", "4/0.5", "--layers", "1"], "at least 2 decoder layers"),
    (["--llm-stage", "4/0.5", "--decode-tokens", "0"], "--decode-tokens must be at least 1"),
    (["--llm-stage", "4/0.5", "--engine", "vllm"], "--engine hf"),
    (["--llm-stage", "4/0.5", "--methods", "tango:nosuch=1"], "unknown tango options"),
])
def test_bad_arguments_exit_2_with_one_line(tiny, args, needle, capsys):
    methods = [] if "--methods" in args else ["--methods", "tango"]
    assert main(["bench", "--arch", "tiny-ov", *methods, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_qwen3_shapes_are_refused_before_a_model_is_built(capsys):
    assert main(["bench", "--arch", "qwen3-vl-8b", "--llm-stage"]) == 2
    assert "qwen3" in capsys.readouterr().err
