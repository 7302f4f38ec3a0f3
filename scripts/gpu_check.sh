#!/usr/bin/env bash
# The GPU numbers, in one run on a CUDA machine that has nothing but a fresh clone (and a python3 with CUDA torch and
# transformers, as the lent H200 machines have): no install, the package runs from src/.
#
#   scripts/gpu_check.sh [--out DIR] [--release PATH] [--vllm-python PY] [--require-vllm] [--dry-run]
#
#   --out DIR         where the JSON files and summary.md go (default: $OUT when set, else out/gpu_check)
#   --release PATH    a checkout of the authors' Tango release: bench-pruner times it side by side (up to 256 frames)
#   --vllm-python PY  a python with vLLM (a GPU build; pytest and tango-prune's deps in the python running this): the
#                     vLLM engine checks run with it WITHOUT enforce_eager (CUDA graphs and torch.compile as users
#                     run them; TANGO_VLLM_EAGER=0): batch invariance (tests/test_vllm_batch.py), prefix caching and
#                     request shapes (tests/test_vllm_prefix.py). Default: $TANGO_VLLM_PYTHON, else this python when
#                     it imports vllm; a GPU run without one says in summary.md that they did not run
#   --require-vllm    no vLLM python is an error (exit 2) instead
#   --dry-run         the same steps on the CPU at tiny sizes: checks the script and its outputs, not the GPU (the
#                     vLLM checks only with an explicit --vllm-python, eager: CPUs have no CUDA graphs)
#
# Steps (about 7 minutes on an H200, estimated, plus the vLLM checks): the machine; TTFT at LLaVA-OV-7B and
# Qwen2.5-VL-7B shapes with 32 frames, none vs tango at 10% (random weights, bf16); at the LLaVA-Video-7B shape, tango
# at 10% before the LLM only vs with the release's stage inside the LLM (layer 18, keep 0.5, same mean retention); the
# pruner alone at 32/256/1024 frames on the GPU; the vLLM checks (vLLM's default runner: V2 on 0.31-0.33 GPUs; set
# VLLM_USE_V2_MODEL_RUNNER=0 for V1), their pytest output in vllm_checks.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-out/gpu_check}"
release=""
dry=0
vpy="${TANGO_VLLM_PYTHON:-}"
vpy_given=0
[ -n "$vpy" ] && vpy_given=1
require_vllm=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || { echo "gpu_check.sh: --out needs a directory" >&2; exit 2; }; out="$2"; shift 2 ;;
    --release) [ $# -ge 2 ] || { echo "gpu_check.sh: --release needs a path" >&2; exit 2; }; release="$2"; shift 2 ;;
    --vllm-python) [ $# -ge 2 ] || { echo "gpu_check.sh: --vllm-python needs a python" >&2; exit 2; }
      vpy="$2"; vpy_given=1; shift 2 ;;
    --require-vllm) require_vllm=1; shift ;;
    --dry-run) dry=1; shift ;;
    -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$release" ] && [ ! -d "$release" ]; then
  echo "gpu_check.sh: --release $release is not a directory" >&2; exit 2
fi
py="${TANGO_PYTHON:-python3}"
[ -x "$(command -v "$py")" ] || py=.venv/bin/python
if [ "$vpy_given" = 1 ] && ! "$vpy" -c "import vllm" >/dev/null 2>&1; then
  echo "gpu_check.sh: --vllm-python $vpy cannot import vllm" >&2; exit 2
fi
if [ "$vpy_given" = 0 ] && [ "$dry" = 0 ] && "$py" -c "import vllm" >/dev/null 2>&1; then
  vpy="$(command -v "$py")"
fi
if [ -z "$vpy" ] && [ "$require_vllm" = 1 ]; then
  echo "gpu_check.sh: no python with vLLM for the vLLM checks (give --vllm-python PY)" >&2; exit 2
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"
cli=("$py" -m tango_prune.cli)
rel=()
[ -n "$release" ] && rel=(--release "$release")

if [ "$dry" = 1 ]; then
  device=cpu; dtype=fp32
  frames=1; layers=(--layers 1); stage_layers=(--layers 2); pruner_frames=4,8; pruner_shape=(--tokens 16 --dim 64)
else
  "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "gpu_check.sh: this python's torch sees no GPU (use --dry-run on a CPU)" >&2; exit 2; }
  device=cuda; dtype=bf16
  frames=32; layers=(); stage_layers=(); pruner_frames=32,256,1024; pruner_shape=(--tokens 196 --dim 3584)
fi

{
  echo "# gpu_check $(date -u +%FT%TZ) $( [ "$dry" = 1 ] && echo '(dry run: CPU, tiny sizes)')"
  echo '```'
  "$py" - <<'EOF'
import platform, torch, transformers
print("python", platform.python_version(), "| torch", torch.__version__, "| transformers", transformers.__version__)
print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
      "| avx512_bf16:", torch.cpu._is_avx512_bf16_supported())
EOF
  echo '```'
} > "$out/summary.md"

for arch in llava-ov-7b qwen2.5-vl-7b; do
  "${cli[@]}" bench --arch "$arch" --frames "$frames" --methods none,tango --retention 0.1 --repeats 2 \
    --decode-tokens 4 --device "$device" --dtype "$dtype" "${layers[@]}" --json "$out/bench_$arch.json" --quiet \
    | tee -a "$out/bench.txt"
done
# the stage inside the LLM once (a depth-reduced dry run needs 2 layers: the stage sits between them)
"${cli[@]}" bench --arch llava-video-7b --frames "$frames" --methods tango --retention 0.1 --llm-stage llava-video \
  --repeats 2 --decode-tokens 4 --device "$device" --dtype "$dtype" "${stage_layers[@]}" \
  --json "$out/bench_llm_stage.json" --quiet | tee -a "$out/bench_llm_stage.txt"
"${cli[@]}" bench-pruner --frames "$pruner_frames" "${pruner_shape[@]}" --device "$device" --dtype "$dtype" \
  --repeats 3 "${rel[@]}" --json "$out/bench_pruner.json" --quiet | tee -a "$out/bench_pruner.txt"

# the vLLM engine checks, as users serve: no enforce_eager on a GPU, vLLM's default cache settings (the tests' own);
# one engine at a time (each takes most of the GPU's memory) in fresh processes (no fork after CUDA)
vllm_rc=none
if [ -n "$vpy" ]; then
  vllm_tests=(tests/test_vllm_batch.py)
  [ -f tests/test_vllm_prefix.py ] && vllm_tests+=(tests/test_vllm_prefix.py)
  eager=0
  [ "$dry" = 1 ] && eager=1
  set +e
  TANGO_VLLM_PYTHON="$vpy" TANGO_VLLM_EAGER=$eager TANGO_VLLM_JOBS=1 TANGO_VLLM_FORK=0 TANGO_REQUIRE_VLLM=1 \
    "$py" -m pytest -q -p no:cacheprovider -rA "${vllm_tests[@]}" > "$out/vllm_checks.txt" 2>&1
  vllm_rc=$?
  set -e
fi

{
  echo; echo "## bench (TTFT at real shapes, none vs tango 0.1)"; echo '```'; cat "$out/bench.txt"; echo '```'
  echo; echo "## bench --llm-stage (LLaVA-Video-7B shape, tango 0.1: before the LLM only vs the stage at layer 18 / keep 0.5)"
  echo '```'; cat "$out/bench_llm_stage.txt"; echo '```'
  echo; echo "## bench-pruner"; echo '```'; cat "$out/bench_pruner.txt"; echo '```'
  echo; echo "## vLLM engine checks (batch, prefix cache, request shapes; enforce_eager off on a GPU)"
  if [ "$vllm_rc" = none ]; then
    echo "not run: no python with vLLM (give --vllm-python PY)"
  else
    echo "vLLM $("$vpy" -c 'import vllm; print(vllm.__version__)' 2>/dev/null), exit status $vllm_rc"
    for f in tests/vllm/batch_check.py tests/vllm/prefix_check.py; do
      [ ! -f "$f" ] || grep -q TANGO_VLLM_EAGER "$f" || echo "NOTE: $f ignores TANGO_VLLM_EAGER: its engines ran with enforce_eager"
    done
    echo '```'; grep -E "^(PASSED|FAILED|ERROR|SKIPPED)|[0-9]+ (passed|failed)" "$out/vllm_checks.txt" || true; echo '```'
  fi
} >> "$out/summary.md"
echo "wrote $out/summary.md"
