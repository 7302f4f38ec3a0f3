"""vLLM-side checks of the LLaVA-OneVision plugin, run by tests/test_vllm_llava.py with .venv-vllm's python.

    check_llava.py build DIR              the tiny checkpoint (tiny_llava.py)
    check_llava.py run DIR MODE OUT.json  one vLLM engine, one video prompt (1 token, top-5 logprobs), then two
                                          prompts of two videos each
        MODE stock:  vLLM as shipped (no plugins, nothing registered)
             unset:  register_llava_onevision() alone, TANGO_PRUNE_METHOD unset (must equal stock)
             tango:  register_llava_onevision() alone, TANGO_PRUNE_METHOD=tango; also records what the model pruned
                     and compares it with our HF adapter (tango_prune.apply) on the same weights and video
             served: as a server runs it: TANGO_PRUNE_METHOD=tango, the plugin loaded from its entry point in every
                     process, the engine and its worker in their own processes (what it pruned: the debug dump)
             chunked: tango with TANGO_PRUNE_OPTIONS chunk_frames=CHUNK (the tower CHUNK frames at a time), against
                     our HF adapter chunked alike
stock/unset/tango run the engine in this process (so apply_model reaches the model) with entry-point plugins off.
All engines get --video-pruning-rate 0.9 (retention 0.1): stock ignores it, so must our class when off.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

RATE = 0.9
CHUNK = 3  # "chunked": frames per tower call (8 frames: 3 + 3 + 2)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default would take a share of the machine
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
sys.path.insert(0, str(Path(__file__).parent))

import tiny_llava  # noqa: E402


def engine(ckpt: str):
    from vllm import LLM

    return LLM(model=ckpt, dtype="float32", enforce_eager=True, max_model_len=512, max_num_seqs=1, seed=0,
               limit_mm_per_prompt={"video": 2, "image": 0}, gpu_memory_utilization=0.15, video_pruning_rate=RATE)


def generate(llm) -> dict:
    from vllm import SamplingParams

    out = llm.generate({"prompt": tiny_llava.PROMPT, "multi_modal_data": {"video": tiny_llava.video()}},
                       SamplingParams(max_tokens=1, temperature=0.0, logprobs=5), use_tqdm=False)[0]
    top = sorted(out.outputs[0].logprobs[0].items(), key=lambda kv: -kv[1].logprob)
    return {"prompt_ids": list(out.prompt_token_ids), "top5": [[int(t), float(lp.logprob)] for t, lp in top[:5]]}


def generate_two(llm, frames: tuple[int, int], seeds: tuple[int, int]) -> list[int]:
    """Two new videos in one prompt. vLLM's stock CPU runner hands both to one call: of one length as a
    (2, T, C, H, W) tensor, of two lengths as a list (the plugin's runner, in "served", gives one video per call).
    A video seen before would come from vLLM's encoder cache instead. Stock vLLM 0.32 fails on the list case (its
    list branch returns 3-D embeddings), so only the pruning modes run that one."""
    from vllm import SamplingParams

    videos = [tiny_llava.video(s)[:t] for s, t in zip(seeds, frames)]
    out = llm.generate({"prompt": tiny_llava.PROMPT_TWO, "multi_modal_data": {"video": videos}},
                       SamplingParams(max_tokens=1, temperature=0.0), use_tqdm=False)[0]
    return list(out.prompt_token_ids)


def _record(model):
    """Wrap this model instance's per-video prune step so the test sees its inputs and output (test-only)."""
    calls, orig = [], model._tango_prune

    def rec(vt):
        out = orig(vt)
        calls.append((vt, out))
        return out

    frames, enc = [], model._tango_encode

    def rec_encode(pixels):
        frames.append(int(pixels.shape[0]))
        return enc(pixels)

    model._tango_prune, model._tango_calls = rec, calls
    model._tango_encode, model._tango_frames = rec_encode, frames
    return type(model).__name__


def _calls(model):
    calls = [(vt.features.detach().clone(), None if vt.saliency is None else vt.saliency.clone(), out.index.clone())
             for vt, out in model._tango_calls]
    model._tango_calls.clear()
    return calls


def pruner_agrees(calls) -> list[bool]:
    """Per recorded video: did the model keep what make_pruner keeps on the features and saliency it pruned?"""
    from tango_prune.integrations.vllm.settings import make_pruner, read_settings
    from tango_prune.types import VideoTokens

    prune = make_pruner(read_settings(), 1 - RATE)
    return [prune(VideoTokens(f, s, (f.shape[0], 4, 4))).index.tolist() == i.tolist() for f, s, i in calls]


def switches() -> dict:
    """pruning_settings off for rate 0 / None and for an unset method, on for method + rate."""
    from types import SimpleNamespace as NS

    from tango_prune.integrations.vllm.llava_ov import pruning_settings

    on = pruning_settings(NS(video_pruning_rate=RATE))
    os.environ.pop("TANGO_PRUNE_METHOD")
    try:
        unset = pruning_settings(NS(video_pruning_rate=RATE))
    finally:
        os.environ["TANGO_PRUNE_METHOD"] = "tango"
    return {"rate0": pruning_settings(NS(video_pruning_rate=0.0))[0] is None,
            "rate_none": pruning_settings(NS(video_pruning_rate=None))[0] is None,
            "unset": unset[0] is None, "on": on[0] is not None and abs(on[1] - (1 - RATE)) < 1e-12}


def hf_side(ckpt: str, rec: tuple) -> dict:
    """Our HF adapter on the same checkpoint and video: its pooled features, saliency, kept index, top-5."""
    import torch
    from transformers import LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor

    import tango_prune
    from tango_prune.integrations.vllm.settings import make_pruner, read_settings
    from tango_prune.types import VideoTokens

    feats, sal, index = rec
    proc = LlavaOnevisionProcessor.from_pretrained(ckpt)
    inputs = proc(text=tiny_llava.PROMPT, videos=[tiny_llava.video()], return_tensors="pt")
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    # the plugin keeps exactly round(retention * T * L) tokens (vLLM reserves the placeholders before pruning):
    # the HF adapter's budget="exact" is that count; its default, the release's, keeps a data-dependent count
    handle = tango_prune.apply(model, "tango", round(1 - RATE, 6), budget="exact")
    with torch.no_grad():
        (hf_vt,), (source,) = handle.encode(dict(inputs), {})
        hf_kept = handle.prune_one(hf_vt)
        logits = model(**inputs).logits[0, -1].float()
    lp = torch.log_softmax(logits, -1)
    top = lp.topk(5)
    ours = make_pruner(read_settings(), 1 - RATE)(VideoTokens(feats, sal, hf_vt.grid))
    return {
        "hf_top5": [[int(t), float(v)] for t, v in zip(top.indices, top.values)],
        "features_maxdiff": float((hf_vt.features - feats).abs().max()),
        "saliency_maxdiff": float((hf_vt.saliency - sal).abs().max()),
        "saliency_source": source,
        "vllm_index": index.tolist(),
        "hf_index": hf_kept.index.tolist(),
        "pruner_on_vllm_inputs_index": ours.index.tolist(),
        "grid": list(hf_vt.grid),
        "hf_video_tokens": int((inputs["input_ids"] == model.config.video_token_id).sum()),
        "hf_text_tokens": int((inputs["input_ids"] != model.config.video_token_id).sum()),
    }


def hf_chunked(ckpt: str) -> dict:
    """Our HF adapter chunk by chunk (``chunk_frames=CHUNK``) on the same checkpoint and video: top-5, kept index."""
    import torch
    from transformers import LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor

    import tango_prune

    proc = LlavaOnevisionProcessor.from_pretrained(ckpt)
    inputs = proc(text=tiny_llava.PROMPT, videos=[tiny_llava.video()], return_tensors="pt")
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    with tango_prune.apply(model, "tango", round(1 - RATE, 6), budget="exact", chunk_frames=CHUNK) as handle:
        with torch.no_grad():
            (vt,), _ = handle.encode(dict(inputs), {})
            index = handle.prune_in_chunks(vt).index.tolist()
            logits = model(**inputs).logits[0, -1].float()
    top = torch.log_softmax(logits, -1).topk(5)
    return {"hf_top5": [[int(t), float(v)] for t, v in zip(top.indices, top.values)], "hf_index": index}


def run_chunked(ckpt: str, out_path: str) -> None:
    """``chunk_frames=CHUNK``: the tower's calls, the answer, two videos of two lengths, and HF chunked alike."""
    os.environ.update(TANGO_PRUNE_METHOD="tango", TANGO_PRUNE_OPTIONS=json.dumps({"chunk_frames": CHUNK}),
                      VLLM_PLUGINS="", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    from tango_prune.integrations.vllm.llava_ov import register_llava_onevision

    register_llava_onevision()
    llm = engine(ckpt)
    llm.apply_model(_record)
    result = generate(llm)
    (result["tower_call_frames"],) = llm.apply_model(lambda m: list(m._tango_frames))
    F = tiny_llava.FRAMES
    result["two_prompt_ids"] = generate_two(llm, (F, F // 2), (3, 4))
    (result["all_tower_call_frames"],) = llm.apply_model(lambda m: list(m._tango_frames))
    result.update(hf_chunked(ckpt))
    Path(out_path).write_text(json.dumps(result))


def map_head_check(llm, ckpt: str) -> dict:
    """saliency="map-head" (the release's, from siglip_head=DIR): the model's encode against the HF adapter's on the
    same frames. The engine was started without it, so the test sets it on the model instance for this one call."""
    import torch
    from transformers import LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor

    import tango_prune
    from tango_prune.models.saliency import load_siglip_head

    head = str(Path(ckpt) / "siglip_head")
    proc = LlavaOnevisionProcessor.from_pretrained(ckpt)
    inputs = proc(text=tiny_llava.PROMPT, videos=[tiny_llava.video()], return_tensors="pt")
    pixels = inputs["pixel_values_videos"][0]

    def encode(model):
        saved = model.tango_saliency, model._tango_head
        model.tango_saliency, model._tango_head = "map-head", load_siglip_head(head, torch.float32, "cpu")
        try:
            with torch.no_grad():
                return model._tango_encode(pixels)
        finally:
            model.tango_saliency, model._tango_head = saved

    (feats, sal), = llm.apply_model(encode)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    with tango_prune.apply(model, "tango", 0.1, budget="exact", saliency="map-head", siglip_head=head) as handle:
        (vt,), (source,) = handle.encode(dict(inputs), {})
    return {"source": source, "features_maxdiff": float((vt.features - feats).abs().max()),
            "saliency_maxdiff": float((vt.saliency - sal).abs().max()),
            "saliency_spread": float(vt.saliency.std())}


def run(ckpt: str, mode: str, out_path: str) -> None:
    t0 = time.perf_counter()
    if mode == "chunked":
        return run_chunked(ckpt, out_path)
    if mode not in ("stock", "unset", "tango", "served"):
        raise ValueError(f"mode must be stock, unset, tango or served, got {mode!r}")
    if mode in ("tango", "served"):
        os.environ["TANGO_PRUNE_METHOD"] = "tango"
    else:
        os.environ.pop("TANGO_PRUNE_METHOD", None)
    if mode == "served":  # vLLM's defaults: engine core and worker processes, entry-point plugins loaded
        os.environ.pop("VLLM_PLUGINS", None)
        os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        llm = engine(ckpt)
        result: dict = {"mode": mode, **generate(llm)}
        F = tiny_llava.FRAMES
        result["same_prompt_ids"] = generate_two(llm, (F, F), (1, 2))
        result["two_prompt_ids"] = generate_two(llm, (F, F // 2), (3, 4))
        result["seconds"] = time.perf_counter() - t0
        Path(out_path).write_text(json.dumps(result))
        return
    os.environ["VLLM_PLUGINS"] = ""  # none: stock is vLLM as shipped, unset/tango test register_llava_onevision()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine in this process: apply_model reaches the model
    if mode in ("tango", "unset"):
        from tango_prune.integrations.vllm.llava_ov import register_llava_onevision

        register_llava_onevision()
    llm = engine(ckpt)
    from vllm.model_executor.models.interfaces import supports_multimodal_pruning

    result = {"mode": mode, "model_class": llm.apply_model(lambda m: type(m).__name__)[0],
              "says_prunes": llm.apply_model(lambda m: bool(supports_multimodal_pruning(m)))[0]}
    if mode == "tango":
        llm.apply_model(_record)
    result.update(generate(llm))
    if mode == "tango":
        (calls,) = llm.apply_model(_calls)
        if len(calls) != 1:
            raise SystemExit(f"expected one pruned video, the model pruned {len(calls)}")
    F = tiny_llava.FRAMES
    result["same_prompt_ids"] = generate_two(llm, (F, F), (1, 2))
    if mode == "tango":
        (same,) = llm.apply_model(_calls)
        result["two_prompt_ids"] = generate_two(llm, (F, F // 2), (3, 4))
        (two,) = llm.apply_model(_calls)
        result["same_kept"], result["same_agree"] = [len(i) for _, _, i in same], pruner_agrees(same)
        result["two_kept"], result["two_agree"] = [len(i) for _, _, i in two], pruner_agrees(two)
        (result["tower_call_frames"],) = llm.apply_model(lambda m: list(m._tango_frames))
        from tango_prune.integrations.vllm.settings import kept_count, read_settings

        result["kept_counts"] = [kept_count(read_settings(), 16, t, 1 - RATE)
                                 for t in (tiny_llava.FRAMES, tiny_llava.FRAMES // 2)]
        result["switches"] = switches()
        result.update(hf_side(ckpt, calls[0]))
        result["map_head"] = map_head_check(llm, ckpt)
    result["seconds"] = time.perf_counter() - t0
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    if sys.argv[1:2] == ["build"] and len(sys.argv) == 3:
        tiny_llava.build(sys.argv[2])
    elif sys.argv[1:2] == ["run"] and len(sys.argv) == 5:
        run(*sys.argv[2:])
    else:
        raise SystemExit(__doc__)
