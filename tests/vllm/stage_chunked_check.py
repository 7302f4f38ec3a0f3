"""The encoder stage under ``chunk_frames`` in vLLM's Qwen towers, in one engine on a tiny checkpoint (the vLLM
venv's python; the caller sets TANGO_PRUNE_METHOD=tango and TANGO_PRUNE_OPTIONS with ``encoder`` and
``chunk_frames`` 2, i.e. 4 frames a chunk):

    python tests/vllm/stage_chunked_check.py --family qwen3_vl --model DIR --out OUT.json --rate 0.9

Asks (greedy, 4 tokens, top-5 log-probs): ``blocks``, a video whose frames repeat within each chunk and differ
across chunks, with the stage and then with the stage switched off on the model (the same frames under a new media
id): each chunk's first temporal patch is a key, so the two must be equal; ``random`` asked twice.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_check import DTYPE, check_parser, video  # noqa: E402
from stage_check import ask_fn  # noqa: E402

CHUNK = 4  # frames per chunk: chunk_frames 2 temporal patches of 2 frames


def main() -> None:
    from vllm import LLM

    args = check_parser(["qwen2_5_vl", "qwen3_vl", "qwen3_5"]).parse_args()
    llm = LLM(model=args.model, enforce_eager=True, max_model_len=1024, dtype=DTYPE.get(args.family, "float32"), seed=0,
              max_num_seqs=1, limit_mm_per_prompt={"video": 1, "image": 0}, video_pruning_rate=args.rate)
    frames, meta = video(args.family)
    blocks = np.repeat(frames[::CHUNK], CHUNK, axis=0)  # frames 0-3 alike, 4-7 alike, ...
    ask = ask_fn(llm, meta)
    result = {"blocks": ask(blocks, "blocks-stage"), "random": ask(frames, "random"),
              "random_again": ask(frames, "random")}
    saved = llm.apply_model(lambda m: m._tango_encoder)[0]
    llm.apply_model(lambda m: setattr(m, "_tango_encoder", None))
    result["blocks_off"] = ask(blocks, "blocks-off")
    llm.apply_model(lambda m: setattr(m, "_tango_encoder", saved))
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
