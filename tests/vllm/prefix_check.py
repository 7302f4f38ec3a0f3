"""Prefix caching and request shapes through one vLLM engine, for tests/test_vllm_prefix.py (vLLM venv's python).

    python tests/vllm/prefix_check.py --family qwen3_vl --model DIR --out OUT.json [--rate 0.9] [--chunk 32]

One engine at vLLM's default cache settings (prefix caching on, 16-token blocks), up to 2 videos and 1 image a
prompt, the prefill budget ``--chunk`` (small, so prompts run in several chunks and a cache hit can end inside a
video). Every scenario is a list of asks; the test compares each ask with the scenario's reference ask:

  again     a video request, then the same request again (the second hits the prefix cache past the video);
  chat      turn 1 about a video, then turn 2 (turn 1 + its answer + a new question: a hit past the video), against
            turn 2 with the video under a fresh id (no hit on it);
  partial   the same request after an aborted copy that got k prefill chunks in (a hit of ~k * chunk tokens: before,
            inside and after the video), against the request with a fresh id;
  together  the same video twice among other videos in one ``generate`` call, against each alone with fresh ids;
  shapes    image only, image + video, two videos of different sizes, a one-frame video, a long video: each asked
            twice with the same ids (the second hits the cache), and with fresh ids.

A reference ask never shares a media id with an earlier ask, so no cache keyed by the media (the prefix cache, the
encoder cache) can serve it. Writes, per scenario, each ask's name, prompt token ids, cached tokens, greedy tokens
and each step's top-5 log-probs, plus where the media placeholders sit in the prompt.
"""
from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_check import LLAVA_TEXTS, SHAPES, video  # noqa: E402
from engine_check import DTYPE, check_parser  # noqa: E402

SYSTEM = ("<|im_start|>system\nYou are a careful assistant. You look at every frame of the video before you answer, "
          "and you answer in one short sentence.<|im_end|>\n")
QWEN_VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
QUESTION = ("What happens in this clip, from the first frame to the last one, and which colours change the most "
            "while it plays?")
LLAVA_PREAMBLE = " ".join(f"w{40 + i % 300}" for i in range(118))
LLAVA_TAIL = " ".join(f"w{50 + i % 300}" for i in range(140))
_ids = itertools.count()
REFUSED = ValueError


def image(seed: int, side: int = 224):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (side, side, 3)).astype(np.uint8)


class Asker:
    def __init__(self, llm, family: str, max_tokens: int):
        from vllm import SamplingParams

        global REFUSED
        from vllm.exceptions import VLLMValidationError as REFUSED  # what the OpenAI server answers with a 400

        self.llm, self.family = llm, family
        self.sp = SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=5)

    def request(self, media: list[tuple[str, object, str]], text: str = QUESTION, history: str = "",
                pad: int = 0) -> dict:
        """media: (kind, data, uuid) in prompt order; ``pad`` tokens of filler before them."""
        if self.family == "llava_ov":  # word-level tokenizer of tests/vllm/tiny_llava.py
            tags = " ".join(f"<{kind}>" for kind, _, _ in media)
            # long enough around the video that 128-token cache blocks end before, inside and after it
            prompt = f"<bos> {LLAVA_PREAMBLE}{' w41' * pad} {tags} {LLAVA_TEXTS[len(text) % len(LLAVA_TEXTS)]} {LLAVA_TAIL} {history}"
        else:
            tags = "".join(QWEN_VIDEO if kind == "video" else QWEN_IMAGE for kind, _, _ in media)
            prompt = f"{SYSTEM}{'x' * pad}<|im_start|>user\n{tags}{text}<|im_end|>\n{history}<|im_start|>assistant\n"
        data, uuids = {}, {}
        for kind, item, uid in media:
            data.setdefault(kind, []).append(item)
            uuids.setdefault(kind, []).append(uid)
        return {"prompt": prompt, "multi_modal_data": data, "multi_modal_uuids": uuids}

    def record(self, name: str, out) -> dict:
        return {"name": name, "prompt_token_ids": list(out.prompt_token_ids),
                "cached": int(out.num_cached_tokens or 0), "generated": list(out.outputs[0].token_ids),
                "text": out.outputs[0].text,
                "top5": [sorted(([int(t), float(lp.logprob)] for t, lp in step.items()), key=lambda x: -x[1])[:5]
                         for step in out.outputs[0].logprobs]}

    def ask(self, name: str, req: dict) -> dict:
        try:
            return self.record(name, self.llm.generate(req, self.sp, use_tqdm=False)[0])
        except (ValueError, REFUSED) as e:  # refused before the engine step (a processor's or vLLM's validation)
            cause = e.__cause__ or e.__context__
            return {"name": name, "error": f"{str(e).splitlines()[0][:200]} ({type(cause).__name__}: {cause})" if cause
                    else str(e).splitlines()[0][:300]}

    def aborted(self, req: dict, steps: int) -> None:
        """Let ``req`` run ``steps`` engine steps, then abort it: its computed blocks stay in the prefix cache."""
        engine = self.llm.llm_engine
        rid = f"aborted-{next(_ids)}"
        engine.add_request(rid, req, self.sp)
        for _ in range(steps):
            engine.step()
        engine.abort_request([rid])
        while engine.has_unfinished_requests():
            engine.step()


def clip(family: str, i: int, frames: int | None = None):
    shape = SHAPES[family][i % len(SHAPES[family])]
    if frames is not None:
        shape = (frames, *shape[1:])
    px, meta = video(shape, seed=200 + i)
    return px if family == "llava_ov" else (px, meta)


def main() -> None:
    ap = check_parser(SHAPES)
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=5)
    ap.add_argument("--scenarios", default="again,chat,partial,together,shapes")
    ap.add_argument("--dtype", default=None, help="default: the family's (engine_check.DTYPE, else float32)")
    args = ap.parse_args()

    from vllm import LLM

    extra = {} if args.rate is None else {"video_pruning_rate": args.rate}
    # prefix caching is left at vLLM's default (on): that is the point
    dtype = args.dtype or DTYPE.get(args.family, "float32")
    eager = os.environ.get("TANGO_VLLM_EAGER", "1") != "0"  # scripts/gpu_check.sh runs it with CUDA graphs
    llm = LLM(model=args.model, enforce_eager=eager, max_model_len=4096, dtype=dtype,
              seed=0, max_num_seqs=8, max_num_batched_tokens=args.chunk,
              limit_mm_per_prompt={"video": 2, "image": 1}, **extra)
    asker = Asker(llm, args.family, args.max_tokens)
    f = args.family
    result: dict[str, list[dict]] = {"prefix_caching": [{"enabled": bool(llm.llm_engine.vllm_config.cache_config
                                                                              .enable_prefix_caching)}]}
    todo = args.scenarios.split(",")
    if "again" in todo:
        req = asker.request([("video", clip(f, 0), "again")])
        result["again"] = [asker.ask("first", req), asker.ask("again", req), asker.ask("third", req)]
    if "chat" in todo:
        first = asker.ask("turn1", asker.request([("video", clip(f, 1), "chat")]))
        history = f"<|im_start|>assistant\n{first['text']}<|im_end|>\n<|im_start|>user\nAnd then?<|im_end|>\n" \
            if f != "llava_ov" else " ".join(f"w{t % 400}" for t in first["generated"])
        result["chat"] = [asker.ask("reference", asker.request([("video", clip(f, 1), "chat-ref")], history=history)),
                          asker.ask("turn2", asker.request([("video", clip(f, 1), "chat")], history=history)), first]
    if "partial" in todo:
        block = llm.llm_engine.vllm_config.cache_config.block_size
        # shift the video (byte-level / word-level tokenizers: one token a filler) so that a cache block ends in
        # the middle of its placeholders: a hit can then end inside it
        probe = asker.ask("probe", asker.request([("video", clip(f, 0), "partial-probe")]))
        video_id = llm.llm_engine.model_config.hf_config.video_token_id if f != "llava_ov" else \
            llm.llm_engine.model_config.hf_config.video_token_index
        at = [i for i, t in enumerate(probe["prompt_token_ids"]) if t == video_id]
        mid = (at[0] + at[-1]) // 2
        pad = -(-mid // block) * block - mid + block  # a whole block of text before it too
        ref = asker.ask("reference", asker.request([("video", clip(f, 0), "partial-ref")], pad=pad))
        rows = [ref]
        n = len(ref["prompt_token_ids"])
        span = [i for i, t in enumerate(ref["prompt_token_ids"]) if t == video_id]
        for k in range(1, -(-n // args.chunk)):  # k chunks past the text the reference left cached
            req = asker.request([("video", clip(f, 0), f"partial-{k}")], pad=pad)
            asker.aborted(req, k)
            rows.append(asker.ask(f"after {k} chunks", req))
            # the hit grows a whole block at a time and stops short of the prompt's end: once three asks in a row
            # found the same hit past the video, later k find it too (measured: k = 8..19 all hit 512 of 626)
            if len(rows) > 3 and rows[-1]["cached"] > span[-1] and len({r["cached"] for r in rows[-3:]}) == 1:
                break
        result["partial"] = rows
    if "together" in todo:
        reqs = [asker.request([("video", clip(f, 3), "together")]), asker.request([("video", clip(f, 4), "t4")]),
                asker.request([("video", clip(f, 3), "together")]), asker.request([("video", clip(f, 5), "t5")])]
        outs = llm.generate(reqs, asker.sp, use_tqdm=False)
        rows = [asker.record(f"together {i}", o) for i, o in enumerate(outs)]
        for i, j in ((0, 3), (1, 4), (3, 5)):
            rows.append(asker.ask(f"alone {i}", asker.request([("video", clip(f, j), f"alone-{i}")])))
        result["together"] = rows
    if "shapes" in todo:
        long = 2 * max(s[0] for s in SHAPES[f])
        side = 112 if f == "llava_ov" else 224  # LLaVA-OV tiles larger images past the tiny encoder cache
        shapes = {"image": lambda t: [("image", image(1, side), f"img-{t}")],
                  "image+video": lambda t: [("image", image(2, side), f"iv-i-{t}"), ("video", clip(f, 6), f"iv-v-{t}")],
                  "two videos": lambda t: [("video", clip(f, 7), f"vv-a-{t}"), ("video", clip(f, 1), f"vv-b-{t}")],
                  "one frame": lambda t: [("video", clip(f, 0, frames=1), f"one-{t}")],
                  "long video": lambda t: [("video", clip(f, 6, frames=long), f"long-{t}")]}
        for name, media in shapes.items():
            result[f"shape: {name}"] = [asker.ask("first", asker.request(media("x"))),
                                        asker.ask("again", asker.request(media("x"))),
                                        asker.ask("fresh ids", asker.request(media("y")))]
    if "slow" in todo:
        # Qwen2.5-VL numbers time as temporal patch x tokens_per_second (1 here) x seconds per patch (2 / fps): at
        # 2/257 fps a patch is 257 positions, where bfloat16 holds only even integers (257 -> 256, 771 -> 768)
        px, meta = clip(f, 0, frames=8)
        fps = 2 / 257
        meta = {**meta, "fps": fps, "duration": 8 / fps}
        req = asker.request([("video", (px, meta), "slow")])
        result["slow"] = [asker.ask("first", req), asker.ask("again", req)]
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
