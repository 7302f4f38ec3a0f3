"""The testbed Video LLMs: stock LlavaOnevisionForConditionalGeneration models whose vision tower is a real pretrained
ViT-S, trained here on clips with composited objects whose truth is known (DATA_CARD.md). v1 and v2 are one set of
modules; what differs between them is configuration (variants.py).

variants.py: v1 and v2;  data.py: clips and A-D questions;  prompt.py: tokenizers, prompts, pixels;  model.py (+ lora.py,
smollm2.py): build, load, export;  qa.py: the eval harness's questions;  train.py (+ loop.py, batch.py, losses.py,
warmstart.py): training;  oracle.py, layout_probe.py, curves.py: the probes and pictures behind docs/testbed.md.
``python -m tango_prune.testbed.train --help``.
"""
