"""One vLLM engine at a given tensor-parallel size, for tests/test_vllm_tp.py (run with the vLLM venv's python).

    python tests/vllm/tp_check.py --family qwen2_5_vl --model DIR --out OUT.json --tp 2 [--rate 0.9] [--n 4]
                                  [--mm-encoder-tp-mode data]

One engine (fp32; bfloat16 for Qwen3.5, see engine_check.DTYPE), vLLM's default prefix caching, ``--n`` video requests of
different frame counts and grids (tests/vllm/batch_check.py's first n) in one ``generate`` call, greedy. Writes per
request the prompt token ids, the greedy tokens and each step's top-5 log-probs, and per worker (``apply_model``,
one entry per tensor-parallel rank) what its vision tower holds: the model class, the rank and world size, the
tower's attention heads in all and on this rank, the width of this rank's fused qkv projection, whether the tower
runs data parallel, and where tango_prune was imported from. The caller sets the environment (TANGO_PRUNE_METHOD,
TANGO_PRUNE_DEBUG_DIR, VLLM_CPU_OMP_THREADS_BIND, ...); with tp > 1 the workers are separate processes, each writing
its own debug records (``<pid>-<n>.pt``).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_check import requests  # noqa: E402
from engine_check import DTYPE, check_parser  # noqa: E402

# the batch check's request shapes per processor: the Qwen3.5 families share Qwen3-VL's processor
SHAPES_OF = {"qwen2_5_vl": "qwen2_5_vl", "qwen3_vl": "qwen3_vl", "qwen3_vl_moe": "qwen3_vl", "qwen3_5": "qwen3_vl",
             "qwen3_5_moe": "qwen3_vl", "llava_ov": "llava_ov"}


def rank_info(model) -> dict:
    """What this worker's vision tower holds (runs inside each worker)."""
    import os

    import tango_prune
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

    if hasattr(model, "visual"):  # the Qwen towers: the block whose q/k the global query reads
        attn = model.visual.blocks[-1].attn
        heads, local = model.config.vision_config.num_heads, attn.num_attention_heads_per_partition
        qkv, head_dim = attn.qkv.output_size_per_partition, attn.hidden_size_per_attention_head
    else:  # LLaVA-OV: SigLIP's last layer (vision_feature_layer -1: the saliency's layer)
        attn = model.vision_tower.vision_model.encoder.layers[-1].self_attn
        heads, local = attn.num_heads, attn.num_heads_per_partition
        qkv, head_dim = attn.qkv_proj.output_size_per_partition, attn.head_dim
    return {"pid": os.getpid(), "rank": get_tensor_model_parallel_rank(),
            "world": get_tensor_model_parallel_world_size(), "model_class": type(model).__name__,
            "vision_heads": int(heads), "local_heads": int(local), "qkv_width": int(qkv), "head_dim": int(head_dim),
            "attn_tp_size": int(getattr(attn, "tp_size", 1)),
            "data_parallel_tower": bool(getattr(model, "use_data_parallel", False)),
            "tango_prune_file": tango_prune.__file__}


def main() -> None:
    ap = check_parser(SHAPES_OF)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=6)
    ap.add_argument("--mm-encoder-tp-mode", default=None, choices=["weights", "data"])
    args = ap.parse_args()
    # apply_model sends a function to the workers: with tp > 1 they are other processes, reached by pickling it
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")

    from vllm import LLM, SamplingParams

    extra = {} if args.rate is None else {"video_pruning_rate": args.rate}
    if args.mm_encoder_tp_mode:
        extra["mm_encoder_tp_mode"] = args.mm_encoder_tp_mode
    llm = LLM(model=args.model, enforce_eager=True, max_model_len=4096, dtype=DTYPE.get(args.family, "float32"),
              seed=0, tensor_parallel_size=args.tp, max_num_seqs=args.n,
              limit_mm_per_prompt={"video": 1, "image": 0}, **extra)
    ranks = llm.apply_model(rank_info)
    reqs = requests(SHAPES_OF[args.family], args.n, f"tp{args.tp}")
    sp = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, logprobs=5)
    outs = llm.generate(reqs, sp, use_tqdm=False)
    result = {"ranks": ranks, "requests": [
        {"prompt_token_ids": list(o.prompt_token_ids), "generated": list(o.outputs[0].token_ids),
         "top5": [sorted(([int(t), float(lp.logprob)] for t, lp in step.items()), key=lambda x: -x[1])[:5]
                  for step in o.outputs[0].logprobs]}
        for o in outs]}
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
