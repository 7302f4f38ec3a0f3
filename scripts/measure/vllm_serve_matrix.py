"""docs/vllm.md "What is verified", the served table: the OpenAI server at vLLM's defaults (prefix caching on), every
family x method (and tensor parallel 2), asked again, in a two-turn chat and 16 at once (tests/vllm/serve_prefix.py).

    .venv-vllm/bin/python scripts/measure/vllm_serve_matrix.py [--families ...] [--methods ...] [--tp 1,2] \
        [--out out/vllm_serve_matrix.json] [--src DIR]

--src DIR: run the plugin from another checkout's src (e.g. an older commit's worktree), to show what changed.
On CPU with --tp 2, bind one core to each rank: VLLM_CPU_OMP_THREADS_BIND="0|1".
Prints a Markdown table: per family, method and TP size, how many answers differ from the first ask.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests" / "vllm"
BF16 = {"qwen3_5", "qwen3_5_moe"}  # vLLM's CPU linear attention runs in bfloat16 only


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default="qwen2_5_vl,qwen3_vl,qwen3_vl_moe,qwen3_5,qwen3_5_moe,llava_ov")
    ap.add_argument("--methods", default="tango,holitom,evs,uniform")
    ap.add_argument("--tp", default="1")
    ap.add_argument("--rate", type=float, default=0.9)
    ap.add_argument("--out", default="out/vllm_serve_matrix.json")
    ap.add_argument("--src", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    if args.src:
        env["PYTHONPATH"] = args.src
    rows = []
    for family in args.families.split(","):
        ckpt = work / family
        build = [TESTS / "check_llava.py", "build", ckpt] if family == "llava_ov" else [TESTS / "tiny.py", ckpt, family]
        subprocess.run([sys.executable, *map(str, build)], check=True, env=env, capture_output=True)
        for tp in (int(x) for x in args.tp.split(",")):
            for method in args.methods.split(","):
                out = work / f"{family}-{method}-{tp}.json"
                cmd = [sys.executable, str(TESTS / "serve_prefix.py"), "--model", str(ckpt), "--out", str(out),
                       "--rate", str(args.rate), "--tp", str(tp),
                       "--dtype", "bfloat16" if family in BF16 else "float32"]
                p = subprocess.run(cmd, env={**env, "TANGO_PRUNE_METHOD": method}, capture_output=True, text=True)
                res = json.loads(out.read_text())["summary"] if p.returncode == 0 else {"failed": (p.stdout + p.stderr)[-500:]}
                rows.append({"family": family, "method": method, "tp": tp, **res})
                print(json.dumps(rows[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print("\n| family | method | TP | again differ (of 8) | chat turn 2 differs | 16 at once differ | errors |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "failed" in r:
            print(f"| {r['family']} | {r['method']} | {r['tp']} | failed | | | |")
        else:
            print(f"| {r['family']} | {r['method']} | {r['tp']} | {r['again']} | {r['chat']} | {r['together']} | "
                  f"{r['errors']} |")


if __name__ == "__main__":
    main()
