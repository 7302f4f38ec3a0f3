"""The command line: summaries users read, JSON they parse, one-line errors with exit code 2."""
import json

import pytest

import torch

from tango_prune.bench.pruner import run_bench
from tango_prune.cli import main


def save_tokens(path, T=4, side=6, D=16):
    torch.save({"features": torch.randn(T, side * side, D), "saliency": torch.rand(T, side * side)}, path)
    return path


def test_prune_prints_summary(tmp_path, capsys):
    f = save_tokens(tmp_path / "v.pt")
    assert main(["prune", str(f), "--retention", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "kept" in out and "of 144 tokens" in out


def test_prune_json(tmp_path, capsys):
    f = save_tokens(tmp_path / "v.pt")
    assert main(["prune", str(f), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["tokens_full"] == 144 and 1 <= d["tokens_kept"] < 144 and sum(d["segments"]) == 4


def one_line_error(capsys, argv, needle):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error:") and needle in err, err


def test_errors_are_one_line(tmp_path, capsys):
    one_line_error(capsys, ["prune", str(tmp_path / "missing.pt")], "no such file")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    one_line_error(capsys, ["prune", str(bad)], "cannot read")
    f = save_tokens(tmp_path / "v.pt")
    one_line_error(capsys, ["prune", str(f), "--retention", "0"], "retention must be in (0, 1]")
    one_line_error(capsys, ["prune", str(f), "--method", "nope"], "unknown method")
    one_line_error(capsys, ["bench-pruner", "--frames", "4", "--tokens", "15"], "square")
    one_line_error(capsys, ["bench-pruner", "--release", str(tmp_path)], "not a checkout")
    torch.save({"features": torch.randn(2, 6, 4)}, tmp_path / "ns.pt")
    one_line_error(capsys, ["prune", str(tmp_path / "ns.pt")], "not square")


def test_bench_pruner_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench-pruner", "--frames", "3,5", "--tokens", "16", "--dim", "32", "--repeats", "1",
                 "--json", str(out), "--quiet"]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["frames"], r["similarity"]) for r in rows] == [(3, "exact"), (3, "fast"), (5, "exact"), (5, "fast")]
    for r in rows:
        assert r["seconds"] > 0 and 1 <= r["kept"] < r["frames"] * 16
        assert set(r) >= {"impl", "peak_rss_gb", "peak_rise_gb", "input_gb", "jaccard_vs_exact", "segments"}
    assert "median s" in capsys.readouterr().out


def test_run_bench_rejects_bad_dtype():
    try:
        run_bench([2], tokens=16, dim=8, dtype="int8", progress=False)
    except ValueError as e:
        assert "--dtype" in str(e)
    else:
        raise AssertionError("expected ValueError")


def test_compare_json_on_saved_tokens(tmp_path, capsys):
    f = save_tokens(tmp_path / "v.pt")
    assert main(["compare", str(f), "--methods", "none,topk,tango,tango:strope=off", "--retention", "0.25", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    rows = {r["method"]: r for r in d["results"]}
    assert set(rows) == {"none", "topk", "tango", "tango:strope=off"}
    assert rows["none"]["coverage"] == pytest.approx(1.0, abs=1e-5) and rows["none"]["fragmentation"] is None
    assert rows["topk"]["tokens_kept"] == 36 and 0 < rows["topk"]["coverage"] < 1
    assert rows["tango"]["fragmentation"] >= 1.0
    for r in d["results"]:
        assert {"method", "retention", "tokens_kept", "tokens_full", "seconds", "coverage", "fragmentation"} <= set(r)


def test_compare_errors_are_one_line(tmp_path, capsys):
    f = save_tokens(tmp_path / "v.pt")
    one_line_error(capsys, ["compare", str(f), "--methods", "nosuch"], "unknown method")
    one_line_error(capsys, ["compare", str(f), "--methods", "tango:strope"], "key=value")
    one_line_error(capsys, ["compare", str(f), "--retention", "0.1,3"], "retention")
    one_line_error(capsys, ["compare", str(f), "--methods", "tango:nosuch=1"], "nosuch")


def test_bench_pruner_times_other_methods_on_the_same_video(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench-pruner", "--frames", "4", "--tokens", "16", "--dim", "8", "--dtype", "fp32", "--similarity", "exact",
                 "--repeats", "1", "--methods", "evs,topk,tango:brief_frames=1", "--json", str(out), "--quiet"]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["impl"] for r in rows] == ["tango-prune", "evs", "topk", "tango:brief_frames=1"]
    assert all(r["seconds"] >= 0 for r in rows)
    assert main(["bench-pruner", "--frames", "4", "--methods", "tango:brief_frames=-1"]) == 2
    assert "brief_frames must be" in capsys.readouterr().err
    assert main(["bench-pruner", "--frames", "4", "--methods", "tangoo"]) == 2
    assert "unknown method 'tangoo'" in capsys.readouterr().err
