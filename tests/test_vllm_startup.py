"""Start-ups the plugin must stop, each with one line and before any weights load: a vLLM outside the supported range
(0.34 included: its checks fail, tests/test_vllm_versions.py), a registry that serves a covered architecture with a
class the plugin does not subclass (0.34's Qwen3.5 on CUDA), a CPU worker that would build vLLM's V2 runner (which the
plugin's runner swap does not reach), and an architecture vLLM can prune that the plugin does not cover (it would
otherwise prune with vLLM's own EVS while a tango-prune method is set). Real engine start-ups in .venv-vllm (about 2
minutes; the first uncovered start-up also lets vLLM inspect the refusing class in a subprocess, ~30 s, cached
after), next to one that starts, whose log shows the weights loading. The version range's edges are checked
in-process."""
from __future__ import annotations

import json
import re
import sys
import types

import pytest

from tests.test_vllm import RATE, SCRIPTS, need_vllm, vllm_run

UNCOVERED = "Cosmos3ForConditionalGeneration"  # a Qwen3-VL subclass: our tiny Qwen3-VL checkpoint serves as one
LOADED = "Loading weights took"  # vLLM's log line once the weights are in (vLLM logs to stdout)
# run engine_check.py with vLLM's static registry table pointing an architecture the plugin covers at another class,
# as 0.34's does for Qwen3.5 on CUDA (vllm.models.qwen3_5, not the class the plugin subclasses)
RETARGET = """import runpy, sys
from vllm.model_executor.models import registry
registry._VLLM_MODELS[sys.argv[1]] = ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration")
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    need_vllm()
    out = tmp_path_factory.mktemp("vllm-startup") / "qwen3_vl"
    p, _ = vllm_run([str(SCRIPTS / "tiny.py"), str(out), "qwen3_vl"], {})
    assert p.returncode == 0, p.stderr[-3000:]
    return out


def engine_check(model, tmp_path, env, wrapper=()):
    args = [*wrapper, str(SCRIPTS / "engine_check.py"), "--family", "qwen3_vl", "--model", str(model),
            "--out", str(tmp_path / "out.json"), "--rate", str(RATE)]
    p, _ = vllm_run(args, env)
    return p, (p.stdout + p.stderr).splitlines()


@pytest.fixture(scope="module")
def started(qwen3, tmp_path_factory):
    """The same start-up with the plugin on and nothing wrong: it serves, and its log says the weights loaded (so
    that the line's absence below means the start-up stopped before, not that vLLM logs elsewhere)."""
    out = tmp_path_factory.mktemp("vllm-started")
    p, lines = engine_check(qwen3, out, {"TANGO_PRUNE_METHOD": "tango"})
    assert p.returncode == 0 and (out / "out.json").exists(), "\n".join(lines[-40:])
    assert any(LOADED in ln for ln in lines), "\n".join(lines[-60:])
    return lines


def assert_stopped_before_weights(p, lines, tmp_path, started):
    assert p.returncode != 0 and not (tmp_path / "out.json").exists()
    assert started and not any(LOADED in ln for ln in lines), "\n".join(lines[-40:])


def error_lines(lines, needle):
    """The distinct exception lines holding ``needle`` (vLLM prefixes a worker's lines with "[rank0]: ")."""
    stripped = (re.sub(r"^\[rank\d+\]: ", "", ln) for ln in lines)
    return sorted({ln for ln in stripped if needle in ln and re.match(r"\w+Error: ", ln)})


@pytest.mark.parametrize("version", ["0.30.0", "0.34.0"])
def test_unsupported_version_stops_startup(qwen3, started, tmp_path, version):
    p, lines = engine_check(qwen3, tmp_path, {"TANGO_PRUNE_METHOD": "tango"},
                            wrapper=[str(SCRIPTS / "fake_version.py"), version])
    assert_stopped_before_weights(p, lines, tmp_path, started)
    got = error_lines(lines, "tango-prune's vLLM plugin supports")
    assert got == [f"RuntimeError: tango-prune's vLLM plugin supports vLLM 0.31 to 0.33, found {version}; install vllm "
                   f"in that range (scripts/setup_vllm.sh) or unset TANGO_PRUNE_METHOD"], got


def test_registry_serving_another_class_stops_startup(qwen3, started, tmp_path):
    """vLLM's own table names a class for Qwen3.5 that the plugin's TangoQwen3_5 does not derive from: the plugin
    would replace stock vLLM's model with an older one, so start-up stops, naming the architecture."""
    script = tmp_path / "retarget.py"
    script.write_text(RETARGET)
    p, lines = engine_check(qwen3, tmp_path, {"TANGO_PRUNE_METHOD": "tango"},
                            wrapper=[str(script), "Qwen3_5ForConditionalGeneration"])
    assert_stopped_before_weights(p, lines, tmp_path, started)
    got = error_lines(lines, "tango-prune: this vLLM serves")
    assert got == ["RuntimeError: tango-prune: this vLLM serves Qwen3_5ForConditionalGeneration as vllm.model_executor."
                   "models.qwen2_5_vl.Qwen2_5_VLForConditionalGeneration, but the plugin subclasses another class; "
                   "install vLLM 0.31 to 0.33 or unset TANGO_PRUNE_METHOD"], got


def test_cpu_v2_runner_stops_startup(qwen3, started, tmp_path):
    """With VLLM_USE_V2_MODEL_RUNNER=1 the CPU worker builds vLLM's V2 runner, not the CPUModelRunner the plugin
    swapped: start-up stops instead of serving with pruning the plugin has not checked there."""
    p, lines = engine_check(qwen3, tmp_path, {"TANGO_PRUNE_METHOD": "tango", "VLLM_USE_V2_MODEL_RUNNER": "1"})
    assert_stopped_before_weights(p, lines, tmp_path, started)
    got = error_lines(lines, "V2 model runner")
    assert got == ["RuntimeError: tango-prune: vLLM's CPU worker would build its V2 model runner, which the plugin "
                   "does not reach (it swaps the V1 CPUModelRunner); set VLLM_USE_V2_MODEL_RUNNER=0 or unset "
                   "TANGO_PRUNE_METHOD"], got


def test_uncovered_prunable_architecture_refuses_to_start(qwen3, started, tmp_path):
    """The tiny Qwen3-VL checkpoint declared as Cosmos3 (its config is Qwen3-VL's under another name): vLLM would
    prune it with EVS; with TANGO_PRUNE_METHOD set and a pruning rate, model init stops with one line naming the
    architecture and the covered ones."""
    model = tmp_path / "cosmos3"
    model.mkdir()
    for f in qwen3.iterdir():
        (model / f.name).symlink_to(f)
    (model / "config.json").unlink()
    cfg = json.loads((qwen3 / "config.json").read_text())
    cfg.update(architectures=[UNCOVERED], model_type="cosmos3_omni")
    (model / "config.json").write_text(json.dumps(cfg))
    p, lines = engine_check(model, tmp_path, {"TANGO_PRUNE_METHOD": "tango"})
    assert_stopped_before_weights(p, lines, tmp_path, started)
    got = error_lines(lines, "tango-prune does not cover")
    assert len(got) == 1, "\n".join(lines[-40:])
    line = got[0]
    assert line.startswith(f"RuntimeError: tango-prune does not cover {UNCOVERED}: vLLM would prune its videos with "
                           f"its own EVS, not TANGO_PRUNE_METHOD=tango; covered: "), line
    covered = line.split("covered: ")[1].split(". ")[0].split(", ")
    assert {"Qwen2_5_VLForConditionalGeneration", "Qwen3VLForConditionalGeneration"} <= set(covered)
    assert UNCOVERED not in covered


@pytest.mark.parametrize("version, ok", [("0.30.9", False), ("0.31.0", True), ("0.32.0+cpu", True), ("0.33.0", True),
                                         ("0.34.0", False), ("0.34.7", False), ("1.0.0", False), ("unknown", False)])
def test_version_range_edges(monkeypatch, version, ok):
    import tango_prune.integrations.vllm as plugin

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(__version__=version))
    if ok:
        assert plugin._check_version() == version
    else:
        with pytest.raises(RuntimeError, match=r"supports vLLM 0\.31 to 0\.33, found "):
            plugin._check_version()


# -- the guards the model classes call at init and on the first video (in-process, no engine) --------------------
@pytest.fixture
def plugin_log(monkeypatch, caplog):
    import logging

    from tango_prune.integrations.vllm import runtime

    monkeypatch.setattr(runtime, "_logger", lambda: logging.getLogger("test.tango_prune"))
    monkeypatch.setattr(runtime, "_logged", set())
    caplog.set_level(logging.DEBUG, logger="test.tango_prune")
    return runtime, caplog


def test_saliency_fallback_logged_at_warning_once(plugin_log):
    """The tower's saliency is routine (INFO); any other source changes the kept tokens, so it shows at WARNING, once
    per source in each process, however many videos use it."""
    import logging

    runtime, caplog = plugin_log
    for _ in range(3):
        runtime.log_saliency("attention-received", from_tower=True)
        runtime.log_saliency("feature-distinctiveness", from_tower=False)
    got = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert got == [(logging.INFO, "tango-prune: saliency source: attention-received"),
                   (logging.WARNING, "tango-prune: saliency source: feature-distinctiveness (not the vision tower's "
                                     "attention: the kept tokens differ from the default's)")], got
    runtime.log_once("k", "old call %s", "form")  # the signature the model classes used before the level argument
    assert caplog.records[-1].levelno == logging.INFO and caplog.records[-1].getMessage() == "old call form"


def test_missing_vllm_attribute_stops_with_one_line():
    """A vLLM attribute the plugin reads (here the attention's tp_size) is never defaulted: a release that renamed it
    stops model init with one line naming it, instead of skipping the saliency all-reduce."""
    from tango_prune.integrations.vllm.vllm_names import MissingVllmName, require_attrs, tp_size

    class Attn:
        num_heads = 16

    with pytest.raises(MissingVllmName) as info:
        tp_size(Attn(), "SiglipAttention")
    assert str(info.value).startswith("tango-prune: vLLM's SiglipAttention has no attribute 'tp_size' ")
    assert "\n" not in str(info.value)
    attn = Attn()
    attn.tp_size = 2
    assert tp_size(attn) == 2
    require_attrs(attn, ("tp_size", "num_heads"), "SiglipAttention")
    with pytest.raises(MissingVllmName, match="has no attribute 'scale'"):
        require_attrs(attn, ("tp_size", "scale", "qkv_proj"), "SiglipAttention")
