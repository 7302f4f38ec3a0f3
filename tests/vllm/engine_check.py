"""One vLLM engine run on a tiny checkpoint, for tests/test_vllm.py (run with the vLLM venv's python).

    python tests/vllm/engine_check.py --family qwen2_5_vl --model DIR --out OUT.json [--rate 0.9] [--hf]

The caller sets the environment (TANGO_PRUNE_METHOD, TANGO_PRUNE_DEBUG_DIR, VLLM_PLUGINS, ...). One engine (fp32;
bfloat16 for Qwen3.5, see DTYPE), in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0), one greedy request with a 16-frame
random video; writes the prompt token ids, the generated ids and the first token's top-5 log-probs. ``--hf``: the
same prompt and frames through transformers + ``tango_prune.apply(model, method, retention=1 - rate,
budget="exact")`` in the same process (also HF's log-probs of vLLM's top 5). Qwen3.5, where vLLM pruned (a
TANGO_PRUNE_DEBUG_DIR record): also "hf_given", the same on the video tokens vLLM's pruner saw instead of HF's own
tower's, to compare the LLMs alone (in bfloat16 the two engines' towers round differently).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny import FRAME_PX, IDS  # noqa: E402

# vLLM 0.32's CPU Gated DeltaNet kernel takes only bfloat16 ("CPU GDN attention requires BF16."): the hybrid
# Qwen3.5 LLMs run in bfloat16 there, the others in float32 (--dtype overrides; --hf runs transformers in it too)
DTYPE = {"qwen3_5": "bfloat16", "qwen3_5_moe": "bfloat16"}
PROMPT = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Describe.<|im_end|>\n<|im_start|>assistant\n"
FRAMES, FPS = 16, 2.0


def video(family: str):
    px = FRAME_PX[family]
    frames = np.random.default_rng(0).integers(0, 255, (FRAMES, px, px, 3), dtype=np.uint8)
    meta = {"fps": FPS, "duration": FRAMES / FPS, "total_num_frames": FRAMES, "frames_indices": list(range(FRAMES)),
            "video_backend": "opencv", "do_sample_frames": False}
    return frames, meta


def run_vllm(args) -> dict:
    from vllm import LLM, SamplingParams

    extra = {} if args.rate is None else {"video_pruning_rate": args.rate}
    llm = LLM(model=args.model, enforce_eager=True, max_model_len=1024, dtype=args.dtype, seed=0, max_num_seqs=1,
              limit_mm_per_prompt={"video": 1, "image": 0}, **extra)
    frames, meta = video(args.family)

    def ask() -> dict:
        out = llm.generate({"prompt": PROMPT, "multi_modal_data": {"video": (frames, meta)}},
                           SamplingParams(max_tokens=4, temperature=0.0, logprobs=5))[0]
        first = out.outputs[0].logprobs[0]
        top = sorted(((lp.logprob, tok) for tok, lp in first.items()), reverse=True)[:5]
        ids = list(out.prompt_token_ids)
        return {"prompt_token_ids": ids, "video_tokens": ids.count(IDS["<|video_pad|>"]),
                "generated": list(out.outputs[0].token_ids), "top5": [[t, lp] for lp, t in top]}

    result = ask()
    if args.twice:  # the same request again: vLLM's caches (prefix, encoder) answer it this time
        result["again"] = ask()
    return result


def debug_records() -> list[Path]:
    where = os.environ.get("TANGO_PRUNE_DEBUG_DIR")
    return sorted(Path(where).glob("*.pt")) if where else []


def run_hf(args, vllm_top: list[int], given: bool = False) -> dict:
    import torch
    import transformers as tf

    import tango_prune

    dtype = getattr(torch, args.hf_dtype or args.dtype)
    model = tf.AutoModelForImageTextToText.from_pretrained(args.model, dtype=dtype).eval()
    proc = tf.AutoProcessor.from_pretrained(args.model)
    frames, meta = video(args.family)
    inputs = proc(text=[PROMPT], videos=[frames], return_tensors="pt",
                  video_metadata=[{k: meta[k] for k in ("fps", "total_num_frames", "frames_indices")}])
    method = os.environ.get("TANGO_PRUNE_METHOD") or "none"
    opts = {"budget": "exact"} if method == "tango" else {}
    chunk = json.loads(os.environ.get("TANGO_PRUNE_OPTIONS") or "{}").get("chunk_frames")
    if chunk:  # the plugin's chunk_frames: HF's tower chunk by chunk too, and its stream on HF's own tokens
        opts["chunk_frames"] = chunk
    if args.family.startswith("qwen3"):  # the times vLLM hands the pruner: each temporal patch's mean frame time
        t = torch.arange(FRAMES, dtype=torch.float32) / FPS
        inputs["video_timestamps"] = [t.reshape(-1, 2).mean(1)]
    with tango_prune.apply(model, method, retention=1.0 - (args.rate or 0.0), **opts) as handle:
        with torch.no_grad():
            if given:  # the tower output vLLM's pruner saw (its debug record): compares the LLMs alone
                d = torch.load(debug_records()[-1])
                videos = [tango_prune.VideoTokens(d["features"].to(dtype), d["saliency"], tuple(d["grid"]),
                                                  d["timestamps"])]
                logits = model(**inputs, video_tokens=videos).logits[0, -1].float()
            else:
                videos = handle.encode_videos(**inputs)
                logits = model(**inputs).logits[0, -1].float()
            stats = handle.last_stats
            kept = handle.prune_in_chunks(videos[0]) if chunk else handle.pruner(videos[0])
    logp = torch.log_softmax(logits, -1)
    lp, tok = logp.topk(5)
    return {"top5": [[int(t), float(v)] for t, v in zip(tok, lp)],
            "at_vllm_top5": [[t, float(logp[t])] for t in vllm_top],  # HF's log-probs of vLLM's top 5
            "stats": [{k: v for k, v in s.items() if isinstance(v, (int, float, str))} for s in stats],
            "index": kept.index.tolist()}


def check_parser(families) -> argparse.ArgumentParser:
    """What every engine check script takes: the family (one of ``families``), the checkpoint, where to write its
    JSON, and the plugin's --video-pruning-rate (None: the plugin's own default)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", required=True, choices=sorted(families))
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rate", type=float, default=None)
    return ap


def main() -> None:
    ap = check_parser(FRAME_PX)
    ap.add_argument("--hf", action="store_true")
    ap.add_argument("--twice", action="store_true", help="ask the same request a second time (result['vllm']['again'])")
    ap.add_argument("--dtype", default=None, help="float32, or bfloat16 for the Qwen3.5 families (DTYPE)")
    ap.add_argument("--hf-dtype", default=None, help="transformers' dtype with --hf (default: --dtype)")
    args = ap.parse_args()
    args.dtype = args.dtype or DTYPE.get(args.family, "float32")
    result = {"vllm": run_vllm(args)}
    if args.hf:
        top = [t for t, _ in result["vllm"]["top5"]]
        result["hf"] = run_hf(args, top)
        if args.family.startswith("qwen3_5") and debug_records():  # HF also on the tokens vLLM's pruner saw
            result["hf_given"] = run_hf(args, top, given=True)
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
