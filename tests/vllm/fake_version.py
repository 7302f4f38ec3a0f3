"""Run a script with ``vllm.__version__`` replaced, to see the plugin's version check stop a real start-up.

    python tests/vllm/fake_version.py 0.30.0 tests/vllm/engine_check.py ARGS...

Only for tests (tests/test_vllm_startup.py); the plugin reads ``vllm.__version__`` when vLLM loads it, which with
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` happens in this process, after the replacement.
"""
import runpy
import sys

import vllm

vllm.__version__ = sys.argv[1]
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
