"""A fork server for the vLLM tests (run with a vLLM venv's python by tests/vllm_helpers.py).

Importing vLLM and its model modules takes ~10 s of the ~20 s a tiny engine run costs on 2 CPU cores. This process
imports them once, then forks one child per job, so each run starts with vLLM already in memory. A child is a fresh
run in every other respect: it sets the job's whole environment before vLLM reads it, and vLLM loads its plugins
(ours among them, which reads TANGO_PRUNE_METHOD) in the child only, since nothing here builds an engine.

Protocol, one JSON object a line. In (stdin): {"id", "argv", "env", "log", "cwd"}; argv is a script path and its
arguments, or ["-m", module, ...]. Out (stdout): {"ready": true} once imported, {"id", "pid"} when a job's child
starts, {"id", "rc"} when it ends. A child writes its stdout and stderr to "log" and leads its own process group (its
engine's workers and servers join it), which is killed when the child ends, so nothing outlives its job. EOF on stdin
ends every child and this process.
"""
from __future__ import annotations

import gc
import importlib
import json
import os
import runpy
import selectors
import signal
import sys
import traceback

# what every engine run imports; a module missing in one release is skipped (vLLM 0.31 has no Qwen3.5)
PRELOAD = ["torch", "numpy", "transformers", "vllm", "vllm.entrypoints.llm", "vllm.v1.engine.llm_engine",
           "vllm.v1.engine.async_llm", "vllm.v1.worker.cpu_worker", "vllm.v1.worker.cpu_model_runner",
           "vllm.v1.core.sched.scheduler", "vllm.entrypoints.launchers.cli_args",
           "vllm.model_executor.models.qwen2_5_vl", "vllm.model_executor.models.qwen3_vl",
           "vllm.model_executor.models.qwen3_vl_moe", "vllm.model_executor.models.qwen3_5",
           "vllm.model_executor.models.llava_onevision", "tango_prune.methods"]


def say(msg: dict) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def child(job: dict) -> None:
    """Runs in the forked child: never returns."""
    code = 1
    try:
        os.setpgid(0, 0)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.environ.clear()
        os.environ.update(job["env"])
        os.chdir(job.get("cwd") or os.getcwd())
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        argv = list(job["argv"])
        try:
            if argv[0] == "-m":
                sys.argv = argv[1:]
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv = argv
                sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
                runpy.run_path(argv[0], run_name="__main__")
            code = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
        import atexit

        atexit._run_exitfuncs()  # what a normal interpreter exit runs (vLLM shuts its engine down there)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)


def main() -> None:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    # what was imported stays for every child: frozen, vLLM's own gc.collect() calls at engine start (four) skip it
    # (measured: ~1.5 s less of a ~5 s tiny engine run), and the children's pages stay shared with this process
    gc.freeze()
    say({"ready": True})
    running: dict[int, str] = {}
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ)
    buf, open_in = b"", True
    while open_in or running:
        if open_in and sel.select(timeout=0.1):
            data = os.read(0, 1 << 16)
            if not data:  # the tests are done (or died): end every child
                open_in = False
                for pid in running:
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                job = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    child(job)
                running[pid] = job["id"]
                say({"id": job["id"], "pid": pid})
        while running:
            pid, status = os.waitpid(-1, 0 if not open_in else os.WNOHANG)
            if pid == 0:
                break
            job_id = running.pop(pid, None)
            try:  # whatever the child started (engine workers, a server) ends with it
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if job_id is not None and open_in:
                say({"id": job_id, "rc": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    main()
