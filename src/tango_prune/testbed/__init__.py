"""The testbed Video LLM: a stock LlavaOnevisionForConditionalGeneration whose vision tower is a real pretrained
ViT-S, trained here on clips with composited objects whose truth is known (DATA_CARD.md).

model.py: build, load, prompts;  data.py: clips and A-D questions;  train.py (+ losses.py): training;
oracle.py, layout_probe.py: the probes behind docs/testbed.md.  ``python -m tango_prune.testbed.train --help``.
"""
