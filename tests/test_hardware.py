from pathlib import Path

import pytest
import torch

from tango_prune import hardware


def test_cpu_default_follows_native_bf16(monkeypatch):
    """bfloat16 only where the CPU has it in hardware: elsewhere torch emulates it ~90x slower than float32."""
    for native, want in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda native=native: native)
        assert hardware.default_dtype("cpu") == want
        assert hardware.resolve_dtype("auto") == want and hardware.resolve_dtype(None) == want


def test_probe_matches_the_cpu_flags():
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        pytest.skip("no /proc/cpuinfo")
    flags = info.read_text()
    native = " avx512_bf16" in flags or " amx_bf16" in flags
    assert hardware.cpu_has_native_bf16() == native


@pytest.mark.parametrize("name,want", [("bf16", torch.bfloat16), ("BFloat16", torch.bfloat16), ("fp16", torch.float16),
                                       ("float32", torch.float32), (torch.float16, torch.float16)])
def test_resolve_spellings(name, want):
    assert hardware.resolve_dtype(name) == want


def test_resolve_rejects_unknown():
    with pytest.raises(ValueError, match="dtype must be auto, bf16, fp16 or fp32, got 'int8'"):
        hardware.resolve_dtype("int8")


def test_describe_cpu_names_the_model_the_cores_and_bf16():
    import os

    import torch

    from tango_prune.hardware import describe_cpu

    text = describe_cpu()
    assert f", {os.cpu_count()} cores, avx512_bf16 {torch.cpu._is_avx512_bf16_supported()}" in text
    assert not text.startswith(",")  # a model name (or "unknown CPU") comes first
