"""The testbed's questions for the eval harness (``eval.accuracy.QA``): asked to a testbed, or to a local checkpoint in
the same words."""
from __future__ import annotations

from ..eval.accuracy import QA
from .data import Sample
from .prompt import answer, inputs, prompt_text
from .variants import Variant


def testbed_qa(v: Variant, weights=None, dtype=None) -> QA:
    """A trained testbed (the committed weights unless ``weights``) and how it is asked."""
    from .model import load

    model, _ = load(v, weights, dtype)
    dtype = next(model.parameters()).dtype
    return QA(model, lambda s: inputs(v, s, dtype), lambda logits: answer(v, logits), v.name)


WEIGHTS_HELP = "testbed (default), testbed-v2, NAME:FILE or a v1 .pt"


def weights_qa(spec: str) -> tuple[Variant, QA]:
    """The probes' ``--weights SPEC`` (WEIGHTS_HELP): the testbed variant and its QA; exits with one line naming the
    argument when SPEC names no testbed."""
    from .variants import resolve

    found = resolve(spec)
    if found is None:
        raise SystemExit(f"--weights: {spec!r} names no testbed; use {WEIGHTS_HELP}")
    return found[0], testbed_qa(*found)


def checkpoint_qa(path) -> QA:
    """A local LLaVA-OV / Qwen2-VL / Qwen2.5-VL checkpoint dir, asked the testbed's questions in v1's words."""
    from ..eval.checkpoint import CheckpointPrompter
    from ..hardware import default_dtype
    from ..models.zoo import load_model

    model = load_model(path, dtype=default_dtype())
    p = CheckpointPrompter(model, path)

    def ask(s: Sample) -> dict:
        return p.inputs(s.frames, s.timestamps, prompt_text(s.question, s.options))

    return QA(model, ask, p.choice, str(path))
