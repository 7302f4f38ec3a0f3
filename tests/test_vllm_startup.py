"""Start-ups the plugin must stop, each with one line: a vLLM outside the supported range, and an architecture vLLM
can prune that the plugin does not cover (it would otherwise prune with vLLM's own EVS while a tango-prune method
is set). Real engine start-ups in .venv-vllm (about 1 minute; the first uncovered start-up also lets vLLM inspect
the refusing class in a subprocess, ~30 s, cached after). The version range's edges are checked in-process."""
from __future__ import annotations

import json
import re
import sys
import types

import pytest

from tests.test_vllm import RATE, SCRIPTS, need_vllm, vllm_run

UNCOVERED = "Cosmos3ForConditionalGeneration"  # a Qwen3-VL subclass: our tiny Qwen3-VL checkpoint serves as one


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


def error_lines(lines, needle):
    """The distinct exception lines holding ``needle`` (vLLM prefixes a worker's lines with "[rank0]: ")."""
    stripped = (re.sub(r"^\[rank\d+\]: ", "", ln) for ln in lines)
    return sorted({ln for ln in stripped if needle in ln and re.match(r"\w+Error: ", ln)})


def test_unsupported_version_stops_startup(qwen3, tmp_path):
    p, lines = engine_check(qwen3, tmp_path, {"TANGO_PRUNE_METHOD": "tango"},
                            wrapper=[str(SCRIPTS / "fake_version.py"), "0.30.0"])
    assert p.returncode != 0 and not (tmp_path / "out.json").exists()
    got = error_lines(lines, "tango-prune's vLLM plugin supports")
    assert got == ["RuntimeError: tango-prune's vLLM plugin supports vLLM 0.31 to 0.34, found 0.30.0; install vllm in "
                   "that range (scripts/setup_vllm.sh) or unset TANGO_PRUNE_METHOD"], got
    assert "Loading weights" not in p.stderr


def test_uncovered_prunable_architecture_refuses_to_start(qwen3, tmp_path):
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
    assert p.returncode != 0 and not (tmp_path / "out.json").exists()
    got = error_lines(lines, "tango-prune does not cover")
    assert len(got) == 1, "\n".join(lines[-40:])
    line = got[0]
    assert line.startswith(f"RuntimeError: tango-prune does not cover {UNCOVERED}: vLLM would prune its videos with "
                           f"its own EVS, not TANGO_PRUNE_METHOD=tango; covered: "), line
    covered = line.split("covered: ")[1].split(". ")[0].split(", ")
    assert {"Qwen2_5_VLForConditionalGeneration", "Qwen3VLForConditionalGeneration"} <= set(covered)
    assert UNCOVERED not in covered


@pytest.mark.parametrize("version, ok", [("0.30.9", False), ("0.31.0", True), ("0.32.0+cpu", True), ("0.34.7", True),
                                         ("0.35.0", False), ("1.0.0", False), ("unknown", False)])
def test_version_range_edges(monkeypatch, version, ok):
    import tango_prune.integrations.vllm as plugin

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(__version__=version))
    if ok:
        assert plugin._check_version() == version
    else:
        with pytest.raises(RuntimeError, match=r"supports vLLM 0\.31 to 0\.34, found "):
            plugin._check_version()
