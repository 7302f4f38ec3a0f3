"""Every registry method through a real vLLM engine, and the start-up errors raised by a real start-up.

docs/vllm.md says any registry method runs in the plugin; before this file only `tango` and `none` ever reached an
engine. Each method runs once on the tiny Qwen3-VL checkpoint (the family with the most plugin code: deepstack rows,
per-frame layout, positions), three on Qwen2.5-VL: the prompt reserves exactly the method's
count, the worker kept what our pruner keeps on the same inputs, and the inputs it recorded (the tower's features and
saliency) are the same whatever the method, since they come before it. ~3 min on 2 CPU cores.
"""
from __future__ import annotations

import json

import pytest
import torch

from tango_prune import VideoTokens, list_methods
from tango_prune.integrations.vllm.settings import Settings, kept_count, make_pruner
from tests.test_vllm import GRID, RATE, SCRIPTS, Runs, build_checkpoints, vllm_run

QWEN3_METHODS = [m for m in list_methods() if m != "none"]
QWEN2_5_METHODS = ["holitom", "evs", "vidcom2"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_checkpoints(tmp_path_factory.mktemp("vllm-methods"), ("qwen3_vl", "qwen2_5_vl"))


@pytest.fixture(scope="module")
def runs(ckpt, tmp_path_factory):
    return Runs(ckpt, tmp_path_factory.mktemp("vllm-methods-runs"))


def method_run(runs, family, method):
    return runs.get(f"{family}-{method}", family, {"TANGO_PRUNE_METHOD": method}, rate=RATE)


def check_run(res, family, method):
    T, H, W = GRID[family]
    k = kept_count(Settings(method, {}), H * W, T, 1 - RATE)
    assert res["vllm"]["video_tokens"] == k, (method, res["vllm"]["video_tokens"], k)
    records = [torch.load(f) for f in res["dumps"]]
    records = [d for d in records if tuple(d["grid"]) == GRID[family]]
    assert records, f"{method}: the worker recorded no video of grid {GRID[family]}"
    prune = make_pruner(Settings(method, {}), 1 - RATE)
    for d in records:
        ours = prune(VideoTokens(d["features"], d["saliency"], d["grid"], d["timestamps"]))
        assert torch.equal(ours.index, d["index"]), method
        assert torch.allclose(ours.features, d["kept_features"], atol=1e-6), method
        assert len(d["index"]) == k
    return records[0]


@pytest.mark.parametrize("method", QWEN3_METHODS)
def test_every_method_runs_in_the_engine_qwen3(runs, method):
    first = check_run(method_run(runs, "qwen3_vl", method), "qwen3_vl", method)
    ref = check_run(method_run(runs, "qwen3_vl", "tango"), "qwen3_vl", "tango")
    # the tower's output and the saliency come before the method: any difference is the plugin's doing
    assert torch.equal(first["features"], ref["features"])
    assert (first["saliency"] is None) == (ref["saliency"] is None)
    if ref["saliency"] is not None:
        assert torch.equal(first["saliency"], ref["saliency"])


@pytest.mark.parametrize("method", QWEN2_5_METHODS)
def test_other_methods_run_in_the_engine_qwen2_5(runs, method):
    check_run(method_run(runs, "qwen2_5_vl", method), "qwen2_5_vl", method)


@pytest.mark.parametrize("e, needle", [
    ({"TANGO_PRUNE_METHOD": "tango", "TANGO_PRUNE_OPTIONS": '{"nope": 1}'}, "is rejected by method 'tango'"),
    ({"TANGO_PRUNE_METHOD": "tango", "TANGO_PRUNE_OPTIONS": "{bad"}, "TANGO_PRUNE_OPTIONS is not valid JSON"),
    ({"TANGO_PRUNE_METHOD": "tango", "TANGO_PRUNE_OPTIONS": '{"budget": "reference"}'}, "needs budget='exact'"),
])
def test_bad_options_stop_startup(ckpt, tmp_path, e, needle):
    """A real start-up with bad TANGO_PRUNE_OPTIONS stops before any weights load, with one line naming the
    variable (vLLM logs to stdout, so both streams are searched)."""
    out = tmp_path / "x.json"
    args = [str(SCRIPTS / "engine_check.py"), "--family", "qwen3_vl", "--model", str(ckpt["qwen3_vl"]),
            "--out", str(out), "--rate", str(RATE)]
    p, _ = vllm_run(args, e)
    text = p.stdout + p.stderr
    assert p.returncode != 0 and not out.exists()
    lines = [ln for ln in text.splitlines() if needle in ln]
    assert lines, text[-3000:]
    assert "Loading weights took" not in text and "Loading safetensors" not in text


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_plugin_off_with_a_pruning_rate_is_stock(ckpt, tmp_path, family):
    """Plugin installed, TANGO_PRUNE_METHOD unset, --video-pruning-rate 0.9: vLLM's own EVS runs, exactly as without
    the plugin. On CPU, vLLM 0.32's runner never turns pruning on, so stock EVS fails on its own position channels
    (measured: "split_with_sizes expects split_sizes to sum exactly to 389 ... [128, 256]" on Qwen3-VL); the plugin,
    when off, must neither repair nor change that, and must equal stock where it works (GPUs, later vLLMs)."""
    results = []
    for name, env in (("stock", {"VLLM_PLUGINS": ""}), ("off", {})):
        out = tmp_path / f"{name}.json"
        args = [str(SCRIPTS / "engine_check.py"), "--family", family, "--model", str(ckpt[family]), "--out", str(out),
                "--rate", str(RATE)]
        p, _ = vllm_run(args, env)
        text = p.stdout + p.stderr
        errors = [ln.split("]: ", 1)[-1] for ln in text.splitlines() if "Error:" in ln and "]: " in ln]
        if p.returncode:
            results.append((p.returncode, errors[-1:]))
        else:
            v = json.loads(out.read_text())["vllm"]
            results.append((0, [v["prompt_token_ids"], v["generated"]]))
        assert "tango-prune" not in text
    assert results[0] == results[1]
