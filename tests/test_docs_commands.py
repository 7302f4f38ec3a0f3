"""Every command README.md and docs/*.md show works after the README's first command alone.

A user runs `scripts/setup.sh` (the default `demo` extras, nothing else) and then a command from the docs, on a
machine that has converted nothing yet. This test builds that environment once (`.venv-docs`, through the same
`scripts/setup.sh` with TANGO_VENV=.venv-docs; rebuilt from scratch when pyproject.toml, constraints.txt or setup.sh
change, reused otherwise) and runs each documented entry point through its console script with the smallest
arguments, each with an empty XDG_CACHE_HOME (where the ViT-S and SmolLM2 conversions are cached) and no Hugging Face
cache. The suite's own `.venv` cannot show such a break: it has the test and lmms-eval extras (accelerate came with
lmms-eval, so testbed v2's GGUF load passed there and failed after `scripts/setup.sh` alone).

Excluded, and why:
- `tango-prune serve` and `bench --engine vllm`: they run in the vLLM venv (`scripts/setup.sh vllm`), not the
  default one; tests/test_vllm_serve.py and tests/test_bench_vllm_load.py run them there.
- `--release PATH/TO/xjtupanda-Tango` (`bench-pruner`, `fidelity --brief`): needs a checkout of the authors' release,
  which is not shipped; tests/test_golden.py holds its outputs.
- `--model testbed-v2:out/testbed_v2/run4/best.pt` (docs/testbed.md): a checkpoint that only a training run writes;
  the loader of testbed v2 itself runs here (`eval --model testbed-v2`).
- `--model DIR` (`run`, `eval`, `fidelity` on a local Hugging Face checkpoint): none ships; tests/test_run_cli.py
  runs an exported testbed checkpoint dir through the same code.
- `bench --encoder reuse`: the same entry point and imports as `bench` (run here, with `--llm-stage`) and the ViT-S
  (run here by `compare`, `fidelity`, `scripts/vit_tokens.py`), but it runs a full-depth SigLIP tower three times
  (minutes on 2 cores); tests/test_bench_encoder.py runs it on a tiny shape.
- `scripts/setup.sh test && .venv/bin/python -m pytest`: that is this suite.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-docs"
STAMP = VENV / "tango-setup-stamp"  # scripts/setup.sh writes it: the extras, then the sha256 of BUILT_FROM
BUILT_FROM = ("pyproject.toml", "constraints.txt", "scripts/setup.sh")
QUESTION = "How many times does a green circle appear?"

# (id, argv after `tango-prune`, a line fragment the user reads in stdout, files the command must write).
# {video} is a sample clip path, {tokens} a saved-tokens file written by scripts/vit_tokens.py.
COMMANDS = [
    ("demo", ["demo", "--frames", "2", "-o", "demo.png"], "tango @ 0.1", ["demo.png"]),
    ("demo-no-model", ["demo", "--no-model", "--frames", "2", "-o", "nomodel.png"], "", ["nomodel.png"]),
    ("run", ["run", "{video}", QUESTION, "--frames", "2", "--json"], '"answer"', []),
    ("eval-testbed", ["eval", "--methods", "tango,tango:encoder=reuse", "--retention", "0.1", "--n", "2", "--positions",
                      "original", "--json", "e.json", "--plot", "e.png", "--quiet"], "tango", ["e.json", "e.png"]),
    ("eval-testbed-v2", ["eval", "--model", "testbed-v2", "--methods", "tango,tango:brief_frames=1", "--retention",
                         "0.1", "--n", "2", "--quiet"], "tango:brief_frames=1", []),
    ("fidelity", ["fidelity", "--n", "2", "--methods", "tango", "--retention", "0.1", "--clips", "bikes", "--frames", "2",
                  "--json", "f.json", "--quiet"], "bikes", ["f.json"]),
    ("fidelity-brief", ["fidelity", "--brief", "--brief-n", "1", "--methods", "tango,tango:brief_frames=1", "--grids",
                        "4x4", "--spans", "1", "--quiet"], "brief objects surviving", []),
    ("viz", ["viz", "{video}", "--compare", "tango,topk", "--frames", "2", "-o", "v.png"], "", ["v.png"]),
    ("compare-video", ["compare", "{video}", "--methods", "tango", "--frames", "2", "--quiet"], "tango", []),
    ("compare-tokens", ["compare", "{tokens}", "--methods", "all,tango:strope=off", "--retention", "0.1,0.2", "--json",
                        "--quiet"], "tango:strope=off", []),
    ("prune", ["prune", "{tokens}", "--retention", "0.1", "--json"], "kept", []),
    ("bench", ["bench", "--arch", "llava-ov-0.5b", "--layers", "2", "--frames", "2", "--methods", "none,tango",
               "--llm-stage", "1/0.5", "--repeats", "1", "--decode-tokens", "1", "--json", "b.json", "--plot", "b.png",
               "--quiet"], "tango", ["b.json", "b.png"]),
    ("bench-pruner", ["bench-pruner", "--frames", "2", "--repeats", "1", "--methods", "tango:brief_frames=1,evs",
                      "--scene", "noise", "--json", "p.json", "--quiet"], "tango", ["p.json"]),
]
# every `tango-prune SUBCOMMAND` the docs show is run above or excluded in the docstring
EXCLUDED = {"serve"}


def _stamp() -> str:
    return "demo\n" + hashlib.sha256(b"".join((ROOT / f).read_bytes() for f in BUILT_FROM)).hexdigest() + "\n"


@pytest.fixture(scope="session")
def docs_venv() -> Path:
    """`.venv-docs` as `TANGO_VENV=.venv-docs scripts/setup.sh` builds it (the default extras only)."""
    if not (STAMP.is_file() and STAMP.read_text() == _stamp() and (VENV / "bin" / "tango-prune").is_file()):
        shutil.rmtree(VENV, ignore_errors=True)  # from scratch: a package dropped from the extras must be gone
        env = {**os.environ, "TANGO_VENV": str(VENV)}
        done = subprocess.run(["scripts/setup.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"scripts/setup.sh failed:\n{done.stderr[-3000:]}"
        assert STAMP.read_text() == _stamp(), "scripts/setup.sh's stamp and this test's disagree"
    return VENV


def _env(cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "TRANSFORMERS_", "TORCH_HOME", "TANGO_", "PYTHON", "VIRTUAL_ENV"))}
    # no network on CI; offline fails at once where a download would be tried, instead of after a timeout
    return {**env, "XDG_CACHE_HOME": str(cache), "HF_HUB_OFFLINE": "1"}


def _run(venv: Path, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cache = cwd / "empty-cache"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir()
    return subprocess.run(argv, cwd=cwd, env=_env(cache), capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session")
def inputs(docs_venv, tmp_path_factory) -> dict:
    """A sample clip's path and the saved tokens `python scripts/vit_tokens.py` writes (docs/testbed.md)."""
    d = tmp_path_factory.mktemp("docs-inputs")
    py = str(docs_venv / "bin" / "python")
    done = _run(docs_venv, [py, "-c", "from tango_prune.video import sample_clip; print(sample_clip('bikes'))"], d)
    assert done.returncode == 0, done.stderr[-2000:]
    video = done.stdout.strip()
    done = _run(docs_venv, [py, str(ROOT / "scripts" / "vit_tokens.py"), "--frames", "2", "--clips", "bikes",
                            "--out", str(d / "tokens")], d)
    assert done.returncode == 0, f"scripts/vit_tokens.py failed:\n{done.stderr[-2000:]}"
    return {"video": video, "tokens": str(d / "tokens" / "bikes.pt")}


@pytest.mark.parametrize("argv,shows,writes", [c[1:] for c in COMMANDS], ids=[c[0] for c in COMMANDS])
def test_documented_command_runs(docs_venv, inputs, tmp_path, argv, shows, writes):
    # one at a time: two at once took as long (88 s both ways on 2 cores; the commands' torch threads use both)
    args = [a.format(**inputs) for a in argv]
    done = _run(docs_venv, [str(docs_venv / "bin" / "tango-prune"), *args], tmp_path)
    assert done.returncode == 0, f"tango-prune {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}"
    assert shows in done.stdout, done.stdout[-2000:]
    for f in writes:
        assert (tmp_path / f).stat().st_size > 0, f
        if f.endswith(".json"):
            json.loads((tmp_path / f).read_text())


def test_every_documented_subcommand_is_run_or_excluded():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    shown = {m for p in docs for m in re.findall(r"tango-prune ([a-z][a-z-]+)", p.read_text())}
    from tango_prune.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    shown &= set(sub.choices)  # prose such as "tango-prune method" is not a command
    covered = {c[1][0] for c in COMMANDS} | EXCLUDED
    assert shown <= covered, f"documented but neither run by this test nor excluded: {sorted(shown - covered)}"
    assert len(shown) >= 10, sorted(shown)  # the scan still finds the docs' commands

