"""Time to first token through vLLM, with and without pruning, at a real model shape with random weights.

Runs in the vLLM venv (``scripts/setup.sh vllm``); ``tango-prune bench --engine vllm`` drives it from the main venv.

    tango-prune bench --engine vllm --arch qwen2.5-vl-3b --frames 16 --methods none,tango --retention 0.1
    python -m tango_prune.bench.vllm_engine build --arch qwen2.5-vl-3b --out DIR            (what it runs)
    python -m tango_prune.bench.vllm_engine time DIR --method tango --rate 0.9 --frames 16 --px 336 --json F

``build`` writes a checkpoint dir without weights (config, a byte-level tokenizer whose special ids the config
names, processor configs); ``time`` loads it with ``load_format="dummy"`` (vLLM's random weights), sends one
warm-up video, then ``repeats`` videos it has never seen (vLLM caches encoder outputs per media hash, so a repeated
video would skip the tower), each for one token, and reports the wall time of each request (the TTFT of a request
alone, processor included) and its prompt token count. One engine per process: the plugin reads its method from
the environment when vLLM loads it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from .archs import ARCHS as HF_ARCHS

# the shapes both engines can time (bench/archs.py holds the public configs)
ARCHS = {name: (HF_ARCHS[name][2], HF_ARCHS[name][1]) for name in ("qwen2.5-vl-3b", "qwen2.5-vl-7b", "qwen3-vl-8b")}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>"]
PROMPT = ("<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What happens in this video?<|im_end|>\n"
          "<|im_start|>assistant\n")


def byte_tokenizer():
    """A byte-level tokenizer (256 bytes, then SPECIALS at 256..262): enough for prompts; ids fit any vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(bytes_to_unicode().values())}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=SPECIALS[1:])


def build(arch: str, out: Path, px: int) -> Path:
    import transformers as tf

    if arch not in ARCHS:
        raise ValueError(f"--arch must be one of {sorted(ARCHS)}, got {arch!r}")
    text, vision = ARCHS[arch]
    tok = byte_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    half = text.get("head_dim", text["hidden_size"] // text["num_attention_heads"]) // 2
    if HF_ARCHS[arch][0] == "qwen3":
        return _build_qwen3(text, vision, tok, ids, half, out, px)
    cfg = tf.Qwen2_5_VLConfig(
        text_config=dict(text, max_position_embeddings=32768, bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], rope_parameters={
                             "rope_type": "default", "rope_theta": 1e6,
                             "mrope_section": [half // 4, half * 3 // 8, half - half // 4 - half * 3 // 8]}),
        vision_config=vision, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=text.get("tie_word_embeddings", False))
    cfg.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    out.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(out)
    size = {"shortest_edge": px * px, "longest_edge": px * px}  # every frame exactly px x px
    proc = tf.Qwen2_5_VLProcessor(
        image_processor=tf.Qwen2VLImageProcessor(min_pixels=px * px, max_pixels=px * px, size=size),
        video_processor=tf.Qwen2VLVideoProcessor(size=size, do_sample_frames=False), tokenizer=tok)
    proc.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _build_qwen3(text: dict, vision: dict, tok, ids: dict, half: int, out: Path, px: int) -> Path:
    """Qwen3-VL: interleaved M-RoPE (Qwen3-VL-8B's sections), frames of px x px (px a multiple of 32)."""
    import transformers as tf

    if px % 32:
        raise ValueError(f"--px must be a multiple of 32 for Qwen3-VL (16-pixel patches, 2 x 2 merge), got {px}")
    rope = {"rope_type": "default", "rope_theta": 5e6, "mrope_interleaved": True,
            "mrope_section": [half * 3 // 8, half * 5 // 16, half - half * 3 // 8 - half * 5 // 16]}
    cfg = tf.Qwen3VLConfig(
        text_config=dict(text, max_position_embeddings=32768, bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], rope_parameters=rope),
        vision_config=vision, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False)
    cfg.architectures = ["Qwen3VLForConditionalGeneration"]
    out.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(out)
    half_norm = dict(image_mean=[0.5] * 3, image_std=[0.5] * 3)
    proc = tf.Qwen3VLProcessor(
        image_processor=tf.Qwen2VLImageProcessor(size={"shortest_edge": px * px, "longest_edge": px * px},
                                                 patch_size=16, **half_norm),
        # no resizing: the budget over all frames is far above any bench video's pixels
        video_processor=tf.Qwen3VLVideoProcessor(size={"shortest_edge": 4096, "longest_edge": 1024 * px * px},
                                                 patch_size=16, do_sample_frames=False, **half_norm),
        tokenizer=tok)
    proc.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def engine_kwargs(ckpt: str, method: str | None, rate: float, max_model_len: int = 32768) -> dict:
    """Select the plugin's method for this process (the plugin reads it when vLLM loads it) and return the engine
    arguments every bench engine shares: random weights at the checkpoint's shape, one video per prompt."""
    if method:
        os.environ["TANGO_PRUNE_METHOD"] = method
    else:
        os.environ.pop("TANGO_PRUNE_METHOD", None)
    # on CPU vLLM refuses to start unless this share of the machine's memory is free (the previous run's engine
    # may still be letting go of its own); the KV cache is sized by VLLM_CPU_KVCACHE_SPACE instead
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    return dict(model=ckpt, load_format="dummy", dtype="bfloat16" if _native_bf16() else "float32", enforce_eager=True,
                max_model_len=max_model_len, limit_mm_per_prompt={"video": 1, "image": 0},
                video_pruning_rate=rate if method else None, seed=0)


def video_meta(frames: int) -> dict:
    """vLLM's metadata for frames already sampled at 2 fps."""
    return {"fps": 2.0, "duration": frames / 2.0, "total_num_frames": frames, "frames_indices": list(range(frames)),
            "video_backend": "opencv", "do_sample_frames": False}


def time_engine(ckpt: str, method: str | None, rate: float, frames: int, px: int, repeats: int) -> dict:
    import numpy as np
    import torch
    from vllm import LLM, SamplingParams

    llm = LLM(**engine_kwargs(ckpt, method, rate), gpu_memory_utilization=0.5)
    params = SamplingParams(max_tokens=1, temperature=0.0)
    rng = np.random.default_rng(0)
    times, prompt_tokens = [], []
    for i in range(repeats + 1):
        video = rng.integers(0, 256, size=(frames, px, px, 3), dtype=np.uint8)  # new media: no encoder-cache hit
        t = time.perf_counter()
        out = llm.generate({"prompt": PROMPT, "multi_modal_data": {"video": (video, video_meta(frames))}}, params,
                           use_tqdm=False)
        sec = time.perf_counter() - t
        if i:  # the first request warms up
            times.append(sec)
            prompt_tokens.append(len(out[0].prompt_token_ids))
    return {"method": method or "none", "retention": 1.0 - rate if method else 1.0, "frames": frames, "px": px,
            "ttft_s": statistics.median(times), "ttft_all_s": times, "prompt_tokens": prompt_tokens[0],
            "torch_threads": torch.get_num_threads()}


def drive(arch: str, frames: list[int], methods: list[str], retentions: list[float], repeats: int, px: int,
          python: str, progress: bool = True) -> list[dict]:
    """From the main venv: one fresh vLLM process per (frames, method, retention), through the vLLM venv's python.
    ``uniform`` at each retention is timed too: it keeps the same count at no cost (no saliency, a fixed grid),
    so its TTFT is what any pruner keeping that count can reach through vLLM (the tower-bound limit)."""
    import subprocess
    import tempfile

    from tqdm import tqdm

    if not Path(python).is_file():
        raise ValueError(f"--vllm-python {python} does not exist; build the vLLM venv with scripts/setup.sh vllm")
    if arch not in ARCHS:
        raise ValueError(f"--arch must be one of {sorted(ARCHS)} with --engine vllm, got {arch!r}")
    jobs = [(f, "none", 1.0) for f in frames]
    jobs += [(f, m, r) for f in frames for r in retentions for m in dict.fromkeys(["uniform", *methods]) if m != "none"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ckpt"
        subprocess.run([python, "-m", __name__, "build", "--arch", arch, "--out", str(ckpt), "--px", str(px)],
                       check=True, capture_output=True, text=True)
        for f, m, r in tqdm(jobs, desc=f"bench vllm {arch}", disable=not progress):
            out = Path(tmp) / "row.json"
            cmd = [python, "-m", __name__, "time", str(ckpt), "--rate", str(round(1.0 - r, 6)), "--frames", str(f),
                   "--px", str(px), "--repeats", str(repeats), "--json", str(out)] + ([] if m == "none" else ["--method", m])
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"vLLM run {m} @ {r:g} failed:\n{done.stderr[-3000:]}")
            rows.append(dict(json.loads(out.read_text()), arch=arch))
    return relate(rows)


def relate(rows: list[dict]) -> list[dict]:
    """Each row against stock vLLM (speed-up) and against ``uniform`` at its retention (the limit, and the cost of
    the method's own work: saliency, selection, merging)."""
    for row in rows:
        base = next(x for x in rows if x["frames"] == row["frames"] and x["method"] == "none")
        ref = next((x for x in rows if x["frames"] == row["frames"] and x["method"] == "uniform"
                    and x["retention"] == row["retention"]), None)
        row["speedup"] = base["ttft_s"] / row["ttft_s"]
        row["limit_speedup"] = base["ttft_s"] / ref["ttft_s"] if ref else 1.0
        row["share_of_limit"] = row["speedup"] / row["limit_speedup"]
        row["method_cost_s"] = row["ttft_s"] - ref["ttft_s"] if ref else 0.0
    return rows


def format_rows(rows: list[dict]) -> str:
    head = "| frames | method | r | prompt tokens | TTFT s | speed-up | limit | share | cost vs uniform s |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['frames']} | {r['method']} | {r['retention']:g} | {r['prompt_tokens']} | {r['ttft_s']:.2f} "
                     f"| {r['speedup']:.2f}x | {r['limit_speedup']:.2f}x | {r['share_of_limit']:.0%} "
                     f"| {r['method_cost_s']:+.2f} |")
    return "\n".join(lines)


def _native_bf16() -> bool:
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported()) or torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tango_prune.bench.vllm_engine")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--arch", default="qwen2.5-vl-3b")
    b.add_argument("--out", required=True)
    b.add_argument("--px", type=int, default=336)
    t = sub.add_parser("time")
    t.add_argument("ckpt")
    t.add_argument("--method", help="registry name; omit for stock vLLM (no pruning)")
    t.add_argument("--rate", type=float, default=0.9, help="vLLM's --video-pruning-rate (share pruned)")
    t.add_argument("--frames", type=int, default=16)
    t.add_argument("--px", type=int, default=336)
    t.add_argument("--repeats", type=int, default=2)
    t.add_argument("--json", required=True)
    a = p.parse_args(argv)
    if a.cmd == "build":
        print(build(a.arch, Path(a.out), a.px))
        return 0
    row = time_engine(a.ckpt, a.method, a.rate, a.frames, a.px, a.repeats)
    Path(a.json).write_text(json.dumps(row))
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
