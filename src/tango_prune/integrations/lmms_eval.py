"""lmms-eval (>= 0.7.3) model plugin: a local LLaVA-OneVision, Qwen2/2.5-VL or Qwen3-VL checkpoint with a tango-prune method
applied, found by lmms-eval through the ``lmms_eval.models`` entry points of our pyproject::

    python -m lmms_eval --model tango_llava_onevision \\
        --model_args pretrained=DIR,method=tango,retention=0.1,frames=32 --tasks TASK

model_args: pretrained (local checkpoint dir, required), method (tango), retention (0.1), frames (32; 16 for the
testbed), fps (sample by rate instead of a count), max_new_tokens (else the task's gen_kwargs, else 32), device
(cpu), dtype (auto: bfloat16 on CUDA and on CPUs with native bfloat16, else float32), timing_file (append one
JSON line of timings per sample), and method options as ``opt_<name>=value`` (e.g. ``opt_saliency=features``).

Per sample we keep ttft_s, total_s, tokens_full, tokens_kept, prune_s, read_s in ``self.timings``. lmms-eval's
samples log has no slot for timings, so we also report them through its own throughput collector (results.json
then has ``throughput.avg_ttft_s`` etc.) and return token counts it does log per sample.

This module imports lmms_eval at its top: only lmms-eval loads it, through the entry points.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest

from ..hardware import resolve_dtype

# evaluator-supplied args we accept and do not use: one request at a time keeps per-sample timings exact
_IGNORED = ("batch_size", "max_batch_size")
_DEFAULT_NEW_TOKENS = 32


def _none(v):
    # model_args values arrive parsed (ints, floats, bools) or as raw strings; "none" means unset
    return None if v is None or (isinstance(v, str) and v.strip().lower() in ("", "none", "null")) else v


class TangoVideoLLM(lmms):
    """A local Video LLM answering lmms-eval's ``generate_until`` requests with video-token pruning applied."""

    is_simple = True
    architectures: tuple[str, ...] = ()  # what the registered name accepts; empty: any supported family
    model_name = "tango"

    def __init__(self, pretrained: str, method: str = "tango", retention: float = 0.1, frames: int = 32, fps=None,
                 max_new_tokens=None, device: str = "cpu", dtype: str = "auto", timing_file=None, **kwargs) -> None:
        super().__init__()
        from ..eval.checkpoint import CheckpointPrompter, checkpoint_positions
        from ..models import apply
        from ..models.zoo import load_model

        opts = {k[4:]: v for k, v in kwargs.items() if k.startswith("opt_")}
        unknown = [k for k in kwargs if not k.startswith("opt_") and k not in _IGNORED]
        if unknown:  # a typo in --model_args would otherwise be silently dropped
            raise ValueError(f"{self.model_name}: unknown model_args {unknown}; method options go as opt_<name>=value")
        self.frames, self.fps = int(frames), _none(fps)
        self.fps = float(self.fps) if self.fps is not None else None
        self.max_new_tokens = int(max_new_tokens) if _none(max_new_tokens) is not None else None
        self.method, self.retention = str(method), 1.0 if method == "none" else float(retention)
        self._device = torch.device(_none(device) or "cpu")
        try:
            dtype = resolve_dtype(dtype, self._device)
        except ValueError as e:
            raise ValueError(f"{self.model_name}: {e}") from None
        self.model = load_model(pretrained, dtype=dtype, device=str(self._device))
        arch = type(self.model).__name__
        if self.architectures and arch not in self.architectures:
            other = "tango_qwen2_5_vl" if "Qwen" in arch else "tango_llava_onevision"
            raise ValueError(f"{pretrained} holds a {arch}; --model {self.model_name} takes {', '.join(self.architectures)} "
                             f"(use --model {other})")
        self.prompter = CheckpointPrompter(self.model, pretrained)
        self.tokenizer = self.prompter.tok
        if "positions" not in opts and (own := checkpoint_positions(self.model.config)):  # an exported testbed's
            opts["positions"] = own
        # applied once for the model's life; every generate() call then prunes
        self.handle = apply(self.model, method=self.method, retention=self.retention, **opts)
        self.timings: list[dict] = []
        self.timing_file = Path(timing_file) if _none(timing_file) else None

    @property
    def device(self):
        return self._device

    # -- lmms API ------------------------------------------------------------------------------------------------
    def generate_until(self, requests) -> list:
        from tqdm import tqdm

        out = []
        for req in tqdm(requests, disable=self.rank != 0, desc=f"{self.model_name} ({self.method} @ {self.retention:g})"):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args[:6]
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
            out.append(self._answer(context, dict(gen_kwargs or {}), self._video_path(visuals, task, doc_id),
                                    {"task": task, "split": split, "doc_id": doc_id}))
        return out

    def loglikelihood(self, requests):
        raise NotImplementedError(f"{self.model_name} implements generate_until only (pruning is measured on generated "
                                  "answers); use a task with output_type: generate_until")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(f"{self.model_name} implements generate_until only; multi-round tasks are not supported")

    # -- one request ---------------------------------------------------------------------------------------------
    def _video_path(self, visuals, task, doc_id) -> str:
        vs = [v for v in (visuals if isinstance(visuals, (list, tuple)) else [visuals]) if v is not None]
        if len(vs) != 1 or not isinstance(vs[0], (str, Path)):
            kinds = [type(v).__name__ for v in vs]
            raise ValueError(f"{self.model_name} takes exactly one video file per question; {task} doc {doc_id} gave {kinds}")
        return str(vs[0])

    def _answer(self, context: str, gen_kwargs: dict, video: str, where: dict) -> GenerationResult:
        from ..video import read_frames

        t0 = time.perf_counter()
        frames, ts = read_frames(video, None if self.fps else self.frames, self.fps)
        read_s = time.perf_counter() - t0
        # the prompter places the video marker itself; the task's own placeholders would make a second one
        text = context.replace("<image>", "").replace("<video>", "").strip()
        inputs = self.prompter.inputs(frames, ts, text)
        inputs = {k: v.to(self._device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        n_new = self.max_new_tokens or int(gen_kwargs.get("max_new_tokens") or _DEFAULT_NEW_TOKENS)
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)

        first: list[float] = []

        def stamp(ids, scores):  # called once per new token; the first call comes right after the prefill
            if not first:
                first.append(time.perf_counter() - t1)
            return scores

        # greedy whatever the task asks (temperature, sampling): pruning methods are compared on the same decoding
        t1 = time.perf_counter()
        with torch.no_grad():
            seq = self.model.generate(**inputs, max_new_tokens=n_new, do_sample=False, logits_processor=[stamp])
        total_s = time.perf_counter() - t1
        new = seq[0, inputs["input_ids"].shape[1]:]
        answer = self.tokenizer.decode(new, skip_special_tokens=True)
        for stop in until:  # lmms-eval's stop strings, applied after the fact
            if stop and stop in answer:
                answer = answer[: answer.index(stop)]
        stats = self.handle.last_stats[0]
        record = {**where, "video": video, "frames": int(frames.shape[0]), "method": self.method,
                  "retention": self.retention, "tokens_full": int(stats["tokens_full"]),
                  "tokens_kept": int(stats["tokens_kept"]), "prune_s": float(stats["prune_s"]), "read_s": read_s,
                  "ttft_s": first[0] if first else total_s, "total_s": total_s, "new_tokens": int(new.numel())}
        self.timings.append(record)
        self._report(record)
        # what the LLM saw: the prompt with its video run shortened to what the method kept
        n_video = int((inputs["input_ids"] == int(self.model.config.video_token_id)).sum())
        seen = int(inputs["input_ids"].shape[1]) - n_video + int(stats.get("llm_tokens", n_video))
        return GenerationResult(text=answer.strip(), token_counts=TokenCounts(input_tokens=seen, output_tokens=record["new_tokens"]))

    def _report(self, r: dict) -> None:
        try:  # lmms-eval's own per-run collector (reset by each evaluate); absent in other versions
            from lmms_eval.models.model_utils.gen_metrics import log_metrics
        except ImportError:
            log_metrics = None
        if log_metrics is not None:
            log_metrics(total_elapsed_time=r["total_s"], total_gen_tokens=r["new_tokens"],
                        avg_speed=r["new_tokens"] / r["total_s"] if r["total_s"] > 0 else 0.0,
                        additional_metrics={"total_requests": 1, **{k: r[k] for k in
                                            ("ttft_s", "prune_s", "read_s", "tokens_full", "tokens_kept")}})
        if self.timing_file is not None and self.rank == 0:
            with self.timing_file.open("a") as f:
                f.write(json.dumps(r) + "\n")


class TangoLlavaOneVision(TangoVideoLLM):
    architectures = ("LlavaOnevisionForConditionalGeneration",)
    model_name = "tango_llava_onevision"


class TangoQwen2_5_VL(TangoVideoLLM):
    architectures = ("Qwen2_5_VLForConditionalGeneration", "Qwen2VLForConditionalGeneration")
    model_name = "tango_qwen2_5_vl"


class TangoQwen3_VL(TangoVideoLLM):
    architectures = ("Qwen3VLForConditionalGeneration",)
    model_name = "tango_qwen3_vl"


# what the entry points name: lmms-eval registers one model id per manifest
LLAVA_ONEVISION = ModelManifest(model_id="tango_llava_onevision", simple_class_path=f"{__name__}.TangoLlavaOneVision")
QWEN2_5_VL = ModelManifest(model_id="tango_qwen2_5_vl", simple_class_path=f"{__name__}.TangoQwen2_5_VL",
                           aliases=("tango_qwen2_vl",))
QWEN3_VL = ModelManifest(model_id="tango_qwen3_vl", simple_class_path=f"{__name__}.TangoQwen3_VL")
