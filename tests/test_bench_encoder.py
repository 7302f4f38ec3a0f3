"""bench --encoder: Tango + the encoder stage against Tango alone and stock in one run, the skip pattern measured on the
real ViT-S (here at a tiny tower's 8 x 8 patch grid, seconds)."""
import json

import pytest

pytest.importorskip("transformers")

from tango_prune.bench import archs  # noqa: E402
from tango_prune.cli import main  # noqa: E402

from .test_bench_e2e import TINY_LLM, TINY_QWEN_VIT, TINY_VIT  # noqa: E402


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(archs.ARCHS, "tiny-ov", ("llava", TINY_VIT, TINY_LLM))
    monkeypatch.setitem(archs.ARCHS, "tiny-qwen", ("qwen", TINY_QWEN_VIT, TINY_LLM))


def test_rows_for_stock_tango_and_each_setting_and_clip(tiny, tmp_path, capsys):
    out = tmp_path / "enc.json"
    assert main(["bench", "--arch", "tiny-ov", "--frames", "4", "--repeats", "1", "--quiet", "--json", str(out),
                 "--encoder", "reuse", "--encoder", "reuse:tau=1", "--clips", "carphone_pristine,bikes"]) == 0
    res = json.loads(out.read_text())
    labels = [r["label"] for r in res["rows"]]
    # 2 settings x 2 clips after the baselines: stock, Tango, and Tango's tower re-timed by the stage rows' own path
    assert labels[:3] == ["none", "tango", "tango, tower re-timed"] and len(labels) == 7
    assert len(res["rows"][2]["control"]) == 5  # timed before and after every stage row
    assert [r["clip"] for r in res["rows"][3:]] == ["carphone_pristine", "bikes"] * 2
    for r in res["rows"][3:]:
        assert 0 < r["computed"] <= 1 and 0 <= r["jaccard"] <= 1 and r["cos_p5"] <= r["cos_median"] <= 1 + 1e-6
        t = res["rows"][2]
        tango_ttft = t["ttft_s"] - t["vision_s"] + r["control_vision_s"]  # Tango with the tower timed around this row
        assert r["ttft_s"] > 0 and r["vs_tango"] == pytest.approx(tango_ttft / r["ttft_s"])
    for r in res["rows"][5:]:  # tau = 1: nothing is reused, the stage's output is the stock forward's
        assert r["computed"] == 1 and r["cos_p5"] > 0.9999 and r["jaccard"] == 1
    assert "vs tango" in capsys.readouterr().out


def test_qwen_rows_follow_the_pattern_of_temporal_patches(tiny, tmp_path):
    """Qwen: the pattern comes from ViT-S on frame pairs (one per temporal patch); tau 1 computes everything."""
    out = tmp_path / "enc.json"
    assert main(["bench", "--arch", "tiny-qwen", "--frames", "4", "--repeats", "1", "--quiet", "--json", str(out),
                 "--encoder", "reuse:gate_layer=0", "--encoder", "reuse:tau=1,gate_layer=0", "--clips", "carphone_pristine"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["label"][:5] for r in rows] == ["none", "tango", "tango", "+t0.7", "+t1/g"]
    assert 0 < rows[3]["computed"] < 1 and rows[4]["computed"] == 1 and rows[4]["jaccard"] == 1
    assert all(r["ttft_s"] > 0 for r in rows)


@pytest.mark.parametrize("args,needle", [
    (["--encoder", "warp"], "encoder must be"),
    (["--encoder", "reuse:tau=2"], "tau"),
    (["--encoder", "reuse", "--clips", "nosuch"], "--clips takes names"),
    (["--encoder", "reuse", "--engine", "vllm"], "--arch must be one of"),
    (["--arch", "qwen2.5-vl-7b", "--encoder", "reuse", "--engine", "vllm", "--px", "330"], "multiple of 28"),
    (["--encoder", "reuse", "--engine", "vllm", "--concurrency", "2"], "--concurrency"),
    (["--encoder", "reuse", "--frames", "4,8"], "one --frames"),
    (["--encoder", "reuse", "--retention", "0.1,0.2"], "one --retention"),
])
def test_bad_arguments_exit_2_with_one_line(tiny, args, needle, capsys):
    base = [] if "--arch" in args else ["--arch", "tiny-ov"]
    assert main(["bench", *base, "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
