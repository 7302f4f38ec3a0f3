"""scripts/gpu_check.sh, what a CPU can check of it: argument handling, and a dry run (CPU, tiny sizes) that writes
every output file a GPU run writes (about two minutes)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def run(*args, **env):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "TANGO_PYTHON": sys.executable, **env})


def test_bad_arguments_exit_2_with_one_line(tmp_path):
    for args, needle in ((("--bogus",), "unknown argument '--bogus'"), (("--out",), "--out needs a directory"),
                         (("--release", str(tmp_path / "nope")), "is not a directory")):
        p = run(*args)
        assert p.returncode == 2 and needle in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_without_a_gpu_it_says_so_unless_dry_run(tmp_path):
    import torch

    if torch.cuda.is_available():  # on a GPU machine the real run is the check
        return
    p = run("--out", str(tmp_path))
    assert p.returncode == 2 and "sees no GPU" in p.stderr


def test_dry_run_writes_every_output(tmp_path):
    p = run("--dry-run", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr[-2000:]
    summary = (tmp_path / "summary.md").read_text()
    # two bench tables, the stage's table, bench-pruner's
    assert "dry run" in summary and summary.count("TTFT s") == 3 and "median s" in summary
    assert "## bench --llm-stage" in summary and "TTFT x" in summary
    for arch in ("llava-ov-7b", "qwen2.5-vl-7b"):
        rows = json.loads((tmp_path / f"bench_{arch}.json").read_text())["results"]
        assert [r["method"] for r in rows] == ["none", "tango"] and rows[1]["speedup"] > 1
    # the stage inside the LLM, once: tango 0.1 before the LLM only, then with the release's stage (18 of 28 layers,
    # keep 0.5; the dry run's 2-layer model puts it after layer 1) at the raised pre-LLM retention 28 r / 23
    stage = json.loads((tmp_path / "bench_llm_stage.json").read_text())
    pre, staged = stage["results"]
    assert stage["llm_stage"] == "18/0.5" and (pre["llm_stage"], staged["llm_stage"]) == (None, "18/0.5")
    assert pre["arch"] == "llava-video-7b" and pre["pre_llm_retention"] == 0.1
    assert abs(staged["pre_llm_retention"] - 2.8 / 23) < 1e-12 and staged["estimated"]
    assert staged["video_tokens_after_stage"] == staged["video_tokens"] - round(staged["video_tokens"] * 0.5)
    assert staged["ttft_ratio"] > 0 and staged["decode_ratio"] > 0
    assert json.loads((tmp_path / "bench_pruner.json").read_text())["results"]
