"""bench --engine vllm --concurrency: its argument checks and its table (the engine runs themselves are timed by hand;
tests/test_vllm_batch.py covers the engine under concurrent load)."""
from __future__ import annotations

import pytest

from tango_prune.bench.vllm_load import _percentile, format_load
from tango_prune.cli import main


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
