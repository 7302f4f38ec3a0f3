import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# CI explores the same examples every run (a red CI must be reproducible); local runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("TANGO_REQUIRE_GOLDEN") == "1" or os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("TANGO_GOLDEN_DIR", ROOT.parent / "shared" / "golden"))


def golden_dir() -> Path:
    """The release's golden vectors; CI sets TANGO_REQUIRE_GOLDEN=1 so that a missing folder fails."""
    if not GOLDEN.is_dir() or not any(GOLDEN.glob("*.pt")):
        if os.environ.get("TANGO_REQUIRE_GOLDEN") == "1":
            pytest.fail(f"golden vectors required (TANGO_REQUIRE_GOLDEN=1) but {GOLDEN} is missing or empty")
        pytest.skip(f"golden vectors not found at {GOLDEN}; set TANGO_GOLDEN_DIR to the folder of the release's *.pt files")
    return GOLDEN


def load_golden(name: str) -> dict:
    return torch.load(golden_dir() / name, weights_only=False)


# CI sets TANGO_REQUIRE_ALL=1: a test that skips there would never run anywhere we look, so a skip (a missing
# optional package, a missing venv, golden vectors) fails the run instead, naming the reason.
REQUIRE_ALL = os.environ.get("TANGO_REQUIRE_ALL") == "1"


def _fail_skip(report) -> None:
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, but TANGO_REQUIRE_ALL=1 (CI runs every test): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.fixture(scope="session")
def vllm_ckpts(tmp_path_factory):
    """The vLLM tests' tiny checkpoints, each family built once a session on first use (tests/vllm_helpers.py)."""
    from tests.vllm_helpers import Checkpoints, close_pool, need_vllm

    need_vllm()
    yield Checkpoints(tmp_path_factory.mktemp("vllm-ckpt"))
    close_pool()  # the engines' fork servers end with the session


@pytest.fixture(scope="session")
def vllm_runs(vllm_ckpts, tmp_path_factory):
    """tests/vllm/engine_check.py runs per engine-tested release ({release: EngineRuns}), each made once a session
    whichever module asks first (tests/vllm_helpers.py)."""
    from tests.vllm_helpers import ENGINES, EngineRuns

    root = tmp_path_factory.mktemp("vllm-runs")
    return {name: EngineRuns(root / name, vllm_ckpts, python, name) for name, python in ENGINES.items()}


# Per-file wall time (setup + call + teardown of its tests) at the end of every run: the CI budget is 20 minutes,
# and the file is the unit a change to the suite adds or removes. TANGO_TEST_TIMES=path also writes every test's time.
_TIMES: dict[str, float] = {}


def pytest_runtest_logreport(report):
    _TIMES[report.nodeid] = _TIMES.get(report.nodeid, 0.0) + report.duration


def _cpu_kind() -> str:
    """bf16 runs ~90x slower where avx512_bf16 is missing, and the suite's time with it: every log names the CPU."""
    from tango_prune.hardware import describe_cpu

    return f"cpu: {describe_cpu()}"


def pytest_terminal_summary(terminalreporter):
    if not _TIMES:
        return
    terminalreporter.write_line(_cpu_kind())
    per_file: dict[str, float] = {}
    for nodeid, secs in _TIMES.items():
        path = nodeid.split("::")[0]
        per_file[path] = per_file.get(path, 0.0) + secs
    terminalreporter.write_sep("=", f"slowest files (of {len(per_file)}; all: {sum(per_file.values()):.0f} s)")
    for path, secs in sorted(per_file.items(), key=lambda kv: -kv[1])[:20]:
        terminalreporter.write_line(f"{secs:8.1f}s  {path}")
    if os.environ.get("TANGO_TEST_TIMES"):
        import json

        Path(os.environ["TANGO_TEST_TIMES"]).write_text(json.dumps(_TIMES, indent=1))
