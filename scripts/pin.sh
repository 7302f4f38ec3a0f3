#!/usr/bin/env bash
# Write constraints.txt from a venv the whole suite was green in:  scripts/pin.sh [.venv-latest]
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
[ -x "$venv/bin/python" ] || { echo "pin.sh: no venv at $venv; run scripts/setup.sh latest first" >&2; exit 2; }
{
  echo "# Exact versions the whole suite (lmms-eval plugin included) was last green with, on Python 3.11, CPU."
  echo "# Used by scripts/setup.sh and CI. Refresh: scripts/setup.sh latest && scripts/pin.sh .venv-latest (see CONTRIBUTING.md)."
  # the CPU wheel's local tag (+cpu) is not on the package index's name; our own editable install is not a pin
  "$venv/bin/python" -m pip freeze --disable-pip-version-check --exclude-editable | grep -v '^tango' | sed 's/^\(torch==[^+]*\)+cpu$/\1/'
} > constraints.txt
echo "wrote constraints.txt from $venv ($(grep -vc '^#' constraints.txt) pins)"
