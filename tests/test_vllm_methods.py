"""Every registry method through a real vLLM engine, and the start-up errors raised by a real start-up.

docs/vllm.md says any registry method runs in the plugin; before this file only `tango` and `none` ever reached an
engine. Each method runs once on the tiny Qwen3-VL checkpoint (the family with the most plugin code: deepstack rows,
per-frame layout, positions), three on Qwen2.5-VL: the prompt reserves exactly the method's count, the worker kept
what our pruner keeps on the same inputs, and the inputs it recorded (the tower's features and saliency) are those
of another run, `none`'s, since they come before the method. The runs are the session's shared ones
(tests/vllm_helpers.py), all started when the module starts.
"""
from __future__ import annotations

import re

import pytest
import torch

from tango_prune import VideoTokens, list_methods
from tango_prune.integrations.vllm.settings import Settings, kept_count, make_pruner
from tests.vllm_helpers import RATE, REFERENCE, SCRIPTS

GRID = {"qwen2_5_vl": (8, 8, 8), "qwen3_vl": (8, 8, 8)}  # as tests/test_vllm.py: 16 frames of 8 x 8 merged tokens
QWEN3_METHODS = [m for m in list_methods() if m != "none"]
QWEN2_5_METHODS = ["holitom", "evs", "vidcom2"]
BAD_OPTIONS = [
    ({"TANGO_PRUNE_METHOD": "tango", "TANGO_PRUNE_OPTIONS": '{"nope": 1}'}, "is rejected by method 'tango'"),
    ({"TANGO_PRUNE_METHOD": "tango", "TANGO_PRUNE_OPTIONS": "{bad"}, "TANGO_PRUNE_OPTIONS is not valid JSON"),
    ({"TANGO_PRUNE_METHOD": "tango", "TANGO_PRUNE_OPTIONS": '{"budget": "reference"}'}, "needs budget='exact'"),
]


@pytest.fixture(scope="module")
def runs(vllm_runs):
    runs = vllm_runs[REFERENCE]
    runs.prefetch(*[("qwen3_vl", m) for m in ("none", *QWEN3_METHODS)], ("qwen2_5_vl", "none"),
                  *[("qwen2_5_vl", m) for m in QWEN2_5_METHODS], ("qwen3_vl", "stock-rate"), ("qwen3_vl", "off-rate"))
    for i, (env, _) in enumerate(BAD_OPTIONS):
        key = f"qwen3_vl-bad-options-{i}"
        runs.start(key, [SCRIPTS / "engine_check.py", "--family", "qwen3_vl", "--model", runs.ckpts["qwen3_vl"],
                         "--out", runs.out(key), "--rate", str(RATE)], env)
    return runs


def records(res, family) -> list[dict]:
    recs = [torch.load(f) for f in sorted(res["dump"].glob("*.pt"))]
    return [d for d in recs if tuple(d["grid"]) == GRID[family]]


def check_run(res, family, method) -> dict:
    """The prompt reserved the method's count, the worker recorded one video, and kept what our pruner keeps."""
    T, H, W = GRID[family]
    k = kept_count(Settings(method, {}), H * W, T, 1 - RATE)
    assert res["vllm"]["video_tokens"] == k, (method, res["vllm"]["video_tokens"], k)
    recs = records(res, family)
    assert len(recs) == 1, f"{method}: {len(recs)} records of grid {GRID[family]} for one video"
    d = recs[0]
    ours = make_pruner(Settings(method, {}), 1 - RATE)(VideoTokens(d["features"], d["saliency"], d["grid"],
                                                                   d["timestamps"]))
    assert torch.equal(ours.index, d["index"]), method
    assert torch.allclose(ours.features, d["kept_features"], atol=1e-6), method
    assert len(d["index"]) == k
    return d


def same_inputs(d: dict, ref: dict) -> None:
    """The tower's output and the saliency come before the method: any difference is the plugin's doing."""
    assert torch.equal(d["features"], ref["features"])
    assert (d["saliency"] is None) == (ref["saliency"] is None)
    if ref["saliency"] is not None:
        assert torch.equal(d["saliency"], ref["saliency"])


@pytest.mark.parametrize("family", list(GRID))
def test_none_keeps_every_token_in_the_engine(runs, family):
    """The reference the methods are compared with: `none` at rate 0.9 keeps all T x H x W tokens, as recorded."""
    d = check_run(runs.run(family, "none"), family, "none")
    assert d["index"].tolist() == list(range(GRID[family][0] * GRID[family][1] * GRID[family][2]))


@pytest.mark.parametrize("method", QWEN3_METHODS)
def test_every_method_runs_in_the_engine_qwen3(runs, method):
    d = check_run(runs.run("qwen3_vl", method), "qwen3_vl", method)
    same_inputs(d, records(runs.run("qwen3_vl", "none"), "qwen3_vl")[0])


@pytest.mark.parametrize("method", QWEN2_5_METHODS)
def test_other_methods_run_in_the_engine_qwen2_5(runs, method):
    d = check_run(runs.run("qwen2_5_vl", method), "qwen2_5_vl", method)
    same_inputs(d, records(runs.run("qwen2_5_vl", "none"), "qwen2_5_vl")[0])


@pytest.mark.parametrize("case", range(len(BAD_OPTIONS)))
def test_bad_options_stop_startup(runs, case):
    """A real start-up with bad TANGO_PRUNE_OPTIONS stops before any weights load, with one line naming the
    variable (vLLM logs to stdout; both streams are in the log)."""
    key, needle = f"qwen3_vl-bad-options-{case}", BAD_OPTIONS[case][1]
    p = runs.futures[key].result()
    assert p.returncode != 0 and not runs.out(key).exists()
    assert [ln for ln in p.stdout.splitlines() if needle in ln], p.stdout[-3000:]
    assert "Loading weights took" not in p.stdout and "Loading safetensors" not in p.stdout


def exception_lines(log: str) -> list[str]:
    """The exception lines of a log ("XxxError: ...", vLLM's "[rank0]: " and logger prefixes stripped), in order."""
    out = []
    for ln in log.splitlines():
        ln = re.sub(r"^\[rank\d+\]: ", "", ln.split("]: ", 1)[-1] if ln.startswith("(") else ln)
        if re.match(r"(\w+\.)*\w*(Error|Exception): ", ln):
            out.append(ln)
    return out


def test_plugin_off_with_a_pruning_rate_is_stock(runs):
    """Plugin installed, TANGO_PRUNE_METHOD unset, --video-pruning-rate 0.9: vLLM's own EVS runs, exactly as without
    the plugin. On CPU, vLLM 0.32's runner never turns pruning on, so stock EVS fails on its own position channels
    (measured: "split_with_sizes expects split_sizes to sum exactly to ..."): the plugin, when off, must neither
    repair nor change that (the same exception lines, not merely both failing), and must equal stock where it works
    (GPUs, later vLLMs). One family: unset, register() returns before it touches vLLM, whatever the model."""
    stock, off = runs.done("qwen3_vl", "stock-rate"), runs.done("qwen3_vl", "off-rate")
    assert "tango-prune" not in stock.stdout and "tango-prune" not in off.stdout
    assert stock.returncode == off.returncode
    if stock.returncode:
        errors = exception_lines(stock.stdout)
        assert errors, f"stock vLLM failed without an exception line:\n{stock.stdout[-3000:]}"
        assert exception_lines(off.stdout) == errors
        assert "tango_prune" not in stock.stdout + off.stdout  # vLLM's own failure, never in our code
    else:
        a, b = runs.run("qwen3_vl", "stock-rate")["vllm"], runs.run("qwen3_vl", "off-rate")["vllm"]
        assert (a["prompt_token_ids"], a["generated"], a["top5"]) == (b["prompt_token_ids"], b["generated"], b["top5"])
