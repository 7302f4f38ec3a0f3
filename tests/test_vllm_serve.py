"""`vllm serve` (vLLM's OpenAI server) with the plugin, over HTTP on 127.0.0.1: a chat request with a real clip is
answered with the pruned prompt count, the inactive plugin leaves the count alone, and an unknown method stops
start-up with one line. Runs scripts/vllm_serve_check.sh (about 1.5 min on 2 CPU cores)."""
from __future__ import annotations

import json
import re
import subprocess

from tests.test_vllm import ROOT, need_vllm


def test_serve_prunes_and_refuses_an_unknown_method():
    need_vllm()
    p = subprocess.run(["bash", str(ROOT / "scripts" / "vllm_serve_check.sh")], capture_output=True, text=True,
                       timeout=900, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    usage = [json.loads(u) for u in re.findall(r"usage: (\{.*?\}) \|", p.stdout)]
    assert len(usage) == 2, p.stdout
    pruned, full = usage[0]["prompt_tokens"], usage[1]["prompt_tokens"]
    grid = re.search(r"grid (\d+)x(\d+)x(\d+) = (\d+) tokens, kept (\d+)", p.stdout)
    n, kept = int(grid.group(4)), int(grid.group(5))
    assert full - pruned == n - kept and kept == round(0.1 * n)  # exactly the video tokens the method dropped
    assert re.search(r"exit status [1-9]", p.stdout) and "TANGO_PRUNE_METHOD='tangoo' is not a tango-prune method" in p.stdout
