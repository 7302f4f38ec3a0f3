"""What ``--model`` names for the commands that run a Video LLM (eval, run, fidelity): a testbed (v1, v2, their weights
files or training checkpoints) or a local checkpoint dir; its questions (QA) and the apply() position options it
asks for."""
from __future__ import annotations

import json
from pathlib import Path


def is_testbed(spec: str) -> bool:
    """'testbed', 'testbed-v2', 'NAME:FILE' (that testbed's weights or a training checkpoint) or a v1 .pt file."""
    from ..testbed.variants import resolve

    return resolve(spec) is not None


def adapter_positions(spec: str, given: str | None) -> dict:
    """apply() options for --positions: the user's choice, else the testbed's own (see testbed.variants; an exported
    testbed dir carries it in its config.json), else the adapter's default."""
    if given is None and is_testbed(spec):
        from ..testbed.variants import resolve

        given = resolve(spec)[0].positions
    elif given is None and (Path(spec) / "config.json").is_file():  # an exported testbed says so in its config
        from ..eval.checkpoint import checkpoint_positions

        given = checkpoint_positions(json.loads((Path(spec) / "config.json").read_text()))
    return {} if given is None else {"positions": given}


def resolve_qa(spec: str):
    """A testbed spec (is_testbed) or a local checkpoint dir -> QA."""
    from ..testbed.qa import checkpoint_qa, testbed_qa
    from ..testbed.variants import resolve

    if is_testbed(spec):
        return testbed_qa(*resolve(spec))
    if not Path(spec).is_dir():
        raise ValueError(f"--model must be 'testbed', 'testbed-v2', a testbed weights file (.pt) or a checkpoint dir; "
                         f"{spec!r} is none")
    return checkpoint_qa(spec)
