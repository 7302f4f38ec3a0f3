"""vLLM plugin: tango-prune's methods in place of vLLM's own video pruning (EVS / VidCom2) for Qwen2.5-VL and
Qwen3-VL (dense and MoE), plus LLaVA-OneVision where ``llava_ov`` provides it.

Entry point (group ``vllm.general_plugins``): ``register``, which vLLM calls in every process it starts. It does
nothing unless ``TANGO_PRUNE_METHOD`` names a method; then vLLM's ``--video-pruning-rate q`` keeps 1 - q of each
video's tokens, chosen by that method (options: ``TANGO_PRUNE_OPTIONS``, a JSON object; see ``settings``).

What it changes, only while active:
  * the module-level ``compute_retained_tokens_count`` names in vLLM's Qwen model modules (vLLM's own hook for the
    placeholder count) -> ``settings.kept_count``, so the prompt reserves exactly what the pruner keeps;
  * the model classes of those architectures -> subclasses (``qwen``) whose EVS post-processing step runs our
    pruner instead and writes merged features into the kept rows, kept tokens keeping their own M-RoPE positions;
  * on CPU, the worker's ``CPUModelRunner`` -> a subclass that turns pruning on like the GPU runner does (vLLM
    0.32's CPU runner never does, so the position channels the models append are never stripped and it crashes).
"""
from __future__ import annotations

import re

from .runtime import activate, active_settings, announce
from .settings import Settings, read_settings

# (major, minor) of the oldest and newest vLLM the plugin starts on, both included: the releases whose checks pass
# (docs/vllm.md "Versions": engine runs on the 0.31 and 0.32 CPU builds; 0.33 source-checked). 0.34 fails the source
# check (its registry serves Qwen3.5 from vllm.models.qwen3_5, its CPU worker builds the V2 runner, which never reads
# the flag the plugin's runner sets), so the plugin refuses to start there (tests/test_vllm_versions.py).
SUPPORTED_VLLM = ((0, 31), (0, 33))
# architecture -> our subclass: its name in .qwen, or (module of this package, name). Registered as classes, not
# "module:class" strings: a string makes vLLM inspect the class in a fresh subprocess (~30 s on a 2-core CPU
# whenever qwen.py changes), while the modules it needs are imported here anyway to patch the counts.
MODELS = {
    "Qwen2_5_VLForConditionalGeneration": "TangoQwen2_5_VL",
    "Qwen3VLForConditionalGeneration": "TangoQwen3VL",
    "Qwen3VLMoeForConditionalGeneration": "TangoQwen3VLMoe",
    "Qwen3_5ForConditionalGeneration": ("qwen3_5", "TangoQwen3_5"),
    "Qwen3_5MoeForConditionalGeneration": ("qwen3_5", "TangoQwen3_5Moe"),
}
# vLLM model modules whose processors size the video placeholders with a module-level count function
COUNT_HOOKS = {
    "vllm.model_executor.models.qwen2_5_vl": ("compute_retained_tokens_count",),
    "vllm.model_executor.models.qwen3_vl": ("compute_retained_tokens_count", "vidcom2_compute_retained_tokens_count"),
}

_registered = False


def _check_version() -> str:
    import vllm

    version = getattr(vllm, "__version__", "unknown")
    m = re.match(r"(\d+)\.(\d+)", str(version))
    if not m or not SUPPORTED_VLLM[0] <= (int(m[1]), int(m[2])) <= SUPPORTED_VLLM[1]:
        raise RuntimeError(f"tango-prune's vLLM plugin supports vLLM {supported_range()}, found {version}; install "
                           f"vllm in that range (scripts/setup_vllm.sh) or unset TANGO_PRUNE_METHOD")
    return version


def supported_range() -> str:
    (a, b), (c, d) = SUPPORTED_VLLM
    return f"{a}.{b} to {c}.{d}"


def _retained_count(settings: Settings):
    from .settings import kept_count

    def compute_retained_tokens_count(tokens_per_frame: int, num_frames: int, q: float) -> int:
        """tango-prune's replacement of vLLM's count: exactly what the pruner keeps at retention 1 - q."""
        announce()
        return kept_count(settings, tokens_per_frame, num_frames, 1.0 - float(q))

    compute_retained_tokens_count.tango_prune = True  # type: ignore[attr-defined]
    return compute_retained_tokens_count


def _patch_counts(settings: Settings) -> None:
    import importlib

    fn = _retained_count(settings)
    for module_name, names in COUNT_HOOKS.items():
        module = importlib.import_module(module_name)
        for name in names:
            if not callable(getattr(module, name, None)):
                raise RuntimeError(f"tango-prune: {module_name}.{name} is missing in this vLLM; the plugin cannot "
                                   f"size video placeholders (supported: vLLM {supported_range()})")
            setattr(module, name, fn)
            if getattr(module, name) is not fn:  # a read-only or proxied namespace would defeat the count
                raise RuntimeError(f"tango-prune: could not replace {module_name}.{name}")


def _patch_cpu_runner() -> None:
    """On CPU, swap the worker's runner class for one that enables pruning for our models (the GPU runner does
    this in its load_model; the CPU runner overrides load_model and never does)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    import vllm.v1.worker.cpu_worker as cpu_worker

    base = cpu_worker.CPUModelRunner
    if getattr(base, "tango_prune", False):
        return

    class TangoCPUModelRunner(base):  # type: ignore[misc,valid-type]
        tango_prune = True

        def load_model(self, *args, **kwargs):
            super().load_model(*args, **kwargs)
            mm = self.model_config.multimodal_config
            if getattr(self.get_model(), "tango_prune_settings", None) is not None and mm is not None:
                self.is_multimodal_pruning_enabled = mm.is_multimodal_pruning_enabled()

    TangoCPUModelRunner.__qualname__ = TangoCPUModelRunner.__name__
    cpu_worker.CPUModelRunner = TangoCPUModelRunner
    if cpu_worker.CPUModelRunner is not TangoCPUModelRunner:
        raise RuntimeError("tango-prune: could not replace vllm.v1.worker.cpu_worker.CPUModelRunner")
    _check_cpu_runner_v1()


def _check_cpu_runner_v1() -> None:
    """The CPU worker builds ``cpu_worker.CPUModelRunner`` (the class swapped in) only on its V1 path; with
    ``use_v2_model_runner`` it builds vLLM's V2 CPU runner, which the swap never reaches. Predict the choice as
    ``VllmConfig.use_v2_model_runner`` makes it on CPU (the variable, else V2 where Triton has a CPU backend) and
    refuse rather than start a runner the plugin has not checked."""
    import vllm.envs as envs
    from vllm.triton_utils import HAS_TRITON

    v2 = envs.VLLM_USE_V2_MODEL_RUNNER
    if v2 is None:
        v2 = bool(HAS_TRITON)
    if v2:
        raise RuntimeError("tango-prune: vLLM's CPU worker would build its V2 model runner, which the plugin does "
                           "not reach (it swaps the V1 CPUModelRunner); set VLLM_USE_V2_MODEL_RUNNER=0 or unset "
                           "TANGO_PRUNE_METHOD")


def _check_registered(classes: dict) -> None:
    """Each architecture resolves to our class, and our class derives from the class vLLM itself would serve (a
    release whose registry points elsewhere, e.g. 0.34's Qwen3.5 on CUDA, would otherwise run an old class)."""
    from vllm import ModelRegistry

    from .coverage import stock_class

    for arch, ours in classes.items():
        got = ModelRegistry.models[arch].load_model_cls() if arch in ModelRegistry.models else None
        if got is not ours:
            raise RuntimeError(f"tango-prune: vLLM's registry resolves {arch} to {got!r}, not {ours.__name__}; the "
                               f"registration did not take (supported: vLLM {supported_range()})")
        stock = stock_class(arch)
        if not issubclass(ours, stock):
            raise RuntimeError(f"tango-prune: this vLLM serves {arch} as {stock.__module__}.{stock.__qualname__}, "
                               f"but the plugin subclasses another class; install vLLM {supported_range()} or unset "
                               f"TANGO_PRUNE_METHOD")


def register() -> None:
    """vLLM's general-plugin entry point. Idempotent; raises (stopping vLLM's start-up) with one line on an
    unsupported vLLM, an unknown method or bad options."""
    global _registered
    if _registered:
        return
    settings = read_settings()
    if settings is None:
        _registered = True
        return
    version = _check_version()
    from vllm import ModelRegistry

    _patch_counts(settings)
    import importlib

    classes = {}
    for arch, target in MODELS.items():
        module, cls_name = target if isinstance(target, tuple) else ("qwen", target)
        classes[arch] = getattr(importlib.import_module(f".{module}", __name__), cls_name)
        ModelRegistry.register_model(arch, classes[arch])
    _check_registered(classes)
    _patch_cpu_runner()
    models = list(MODELS)
    try:
        from . import llava_ov
    except ImportError as e:
        if getattr(e, "name", None) != f"{__name__}.llava_ov":
            raise
        llava_ov = None
    if llava_ov is not None and hasattr(llava_ov, "register_llava_onevision"):
        llava_ov.register_llava_onevision()
        models.append(llava_ov.ARCH)
        _check_registered({llava_ov.ARCH: llava_ov.TangoLlavaOnevision})
    from .coverage import refuse_uncovered  # vLLM-prunable architectures not in `models` refuse to start

    refuse_uncovered(models, version)
    _registered = True
    activate(settings, f"tango-prune {__import__('tango_prune').__version__} active (vLLM {version}): "
                       f"{settings.describe()}; models: {', '.join(models)}; kept share = 1 - --video-pruning-rate")


__all__ = ["MODELS", "active_settings", "register"]
