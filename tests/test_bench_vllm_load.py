"""bench --engine vllm --concurrency: its argument checks, its table, and its engine path run small: what ``drive``
runs per method (``python -m tango_prune.bench.vllm_load``: vLLM's AsyncLLM, concurrent requests in a closed loop)
on the tiny Qwen2.5-VL checkpoint, stock and tango. The numbers themselves (docs/benchmarks.md) are timed by hand at
real shapes; this shows the path runs, prunes, and reports each level."""
from __future__ import annotations


import pytest

from tango_prune.bench.vllm_load import _percentile, format_load
from tango_prune.cli import main
from tests.vllm_helpers import RunCache

FRAMES, PX, LEVELS = 4, 224, (1, 3)  # 2 temporal patches of 8 x 8 merged tokens on the tiny checkpoint


@pytest.mark.parametrize("args, needle", [
    (["--concurrency", "1,4", "--frames", "8,16"], "one --frames and one --retention"),
    (["--concurrency", "0,4"], "expected positive integers"),
    (["--concurrency", "2", "--rounds", "0"], "must be >= 1"),
])
def test_bad_load_arguments_are_one_line(capsys, args, needle):
    try:
        code = main(["bench", "--arch", "qwen2.5-vl-3b", "--engine", "vllm", *args])
    except SystemExit as e:  # argparse's own check of the value
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


def test_table_relates_each_level_to_stock():
    level = lambda c, rps, n: {"concurrency": c, "requests_per_s": rps, "ttft_p50_s": 1.0, "ttft_p95_s": 2.0,
                               "prompt_tokens": n}
    table = format_load([{"method": "none", "retention": 1.0, "levels": [level(1, 0.5, 600), level(8, 1.0, 600)]},
                         {"method": "tango", "retention": 0.1, "levels": [level(1, 1.0, 90), level(8, 3.0, 90)]}])
    rows = [r for r in table.splitlines() if r.startswith("| tango")]
    assert "| 2.00x |" in rows[0] and "| 3.00x |" in rows[1]


def test_percentile():
    assert _percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert _percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.95) == pytest.approx(4.8)
    assert _percentile([7.0], 0.95) == 7.0


@pytest.fixture(scope="module")
def load_runs(vllm_ckpts, tmp_path_factory):
    cache = RunCache(tmp_path_factory.mktemp("vllm-load"))
    ckpt = vllm_ckpts["qwen2_5_vl"]
    for method in ("none", "tango"):
        args = ["-m", "tango_prune.bench.vllm_load", ckpt, "--rate", "0.9", "--frames", str(FRAMES), "--px", str(PX),
                "--concurrency", ",".join(map(str, LEVELS)), "--rounds", "2", "--max-model-len", "4096",
                "--json", cache.out(method)] + ([] if method == "none" else ["--method", method])
        cache.start(method, args)
    return {m: cache.get(m) for m in ("none", "tango")}


def test_load_bench_runs_its_async_engine_path(load_runs):
    """Each level ran c x rounds requests through AsyncLLM and timed them; tango's prompts hold exactly the kept
    count (2 x 8 x 8 video tokens -> 13) where stock's hold all 128, and the table relates the two."""
    stock, tango = load_runs["none"], load_runs["tango"]
    assert "tango-prune 0.1.0 active" in tango["log"] and "tango-prune" not in stock["log"]
    for res in (stock, tango):
        assert [lv["concurrency"] for lv in res["levels"]] == list(LEVELS)
        for lv in res["levels"]:
            assert lv["requests"] == 2 * lv["concurrency"] and lv["wall_s"] > 0 and lv["requests_per_s"] > 0
            assert 0 < lv["ttft_p50_s"] <= lv["ttft_p95_s"] < lv["wall_s"] * 2
    video = (FRAMES // 2) * 8 * 8
    assert stock["levels"][0]["prompt_tokens"] - tango["levels"][0]["prompt_tokens"] == video - round(0.1 * video)
    table = format_load([stock, tango])
    assert table.count("| tango |") == len(LEVELS) and table.count("| none |") == len(LEVELS)
