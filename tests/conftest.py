import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# CI explores the same examples every run (a red CI must be reproducible); local runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("TANGO_REQUIRE_GOLDEN") == "1" or os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("TANGO_GOLDEN_DIR", ROOT.parent / "shared" / "golden"))


def golden_dir() -> Path:
    """The release's golden vectors; CI sets TANGO_REQUIRE_GOLDEN=1 so that a missing folder fails."""
    if not GOLDEN.is_dir() or not any(GOLDEN.glob("*.pt")):
        if os.environ.get("TANGO_REQUIRE_GOLDEN") == "1":
            pytest.fail(f"golden vectors required (TANGO_REQUIRE_GOLDEN=1) but {GOLDEN} is missing or empty")
        pytest.skip(f"golden vectors not found at {GOLDEN}; set TANGO_GOLDEN_DIR to the folder of the release's *.pt files")
    return GOLDEN


def load_golden(name: str) -> dict:
    return torch.load(golden_dir() / name, weights_only=False)
