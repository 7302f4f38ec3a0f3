"""Which floating type runs fast where: the library's default dtype for models and stand-in features."""
from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """True where the CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX).

    Without it torch's CPU bfloat16 matmul is an emulated path: measured on a 2-core AMD EPYC with AVX2 only
    (torch 2.13.0), a 2048 x 1024 x 1024 product took 6.2 s in bfloat16 against 0.07 s in float32, and the ViT-S
    tower 21.7 s per 16-frame clip against 2.2 s. On a CPU with AVX512-BF16 bfloat16 is ~3.5x faster than float32.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(getattr(torch.cpu, name)() for name in probes if hasattr(torch.cpu, name))
    except Exception:  # a private probe that changed: float32 is never the slow choice
        return False


def default_dtype(device: str | torch.device = "cpu") -> torch.dtype:
    """bfloat16 on a CUDA device that supports it and on a CPU with native bfloat16; float32 elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.float16 if torch.cuda.is_available() and not torch.cuda.is_bf16_supported() else torch.bfloat16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return torch.float32


def resolve_dtype(name: str | torch.dtype | None, device: str | torch.device = "cpu") -> torch.dtype:
    """A dtype from a user's spelling: None or "auto" -> default_dtype(device); "bf16"/"bfloat16", "fp16"/"float16",
    "fp32"/"float32", or a torch.dtype."""
    if isinstance(name, torch.dtype):
        return name
    if name is None or str(name).lower() == "auto":
        return default_dtype(device)
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "half": torch.float16, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32}
    try:
        return table[str(name).lower()]
    except KeyError:
        raise ValueError(f"dtype must be auto, bf16, fp16 or fp32, got {name!r}") from None


__all__ = ["cpu_has_native_bf16", "default_dtype", "resolve_dtype"]


def describe_cpu() -> str:
    """The CPU a timing ran on, as every table names it: model, cores and whether bfloat16 is native (the timings
    differ ~90x without it)."""
    import os
    from pathlib import Path

    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "unknown CPU")
    return f"{model}, {os.cpu_count()} cores, avx512_bf16 {torch.cpu._is_avx512_bf16_supported()}"
