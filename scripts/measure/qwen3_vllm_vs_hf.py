"""Made docs/vllm.md's Qwen3-VL finding: video features 0.02 apart with no pruning, found at the pixel normalisation.

Where stock vLLM and stock transformers first disagree on a tiny Qwen3-VL checkpoint (no pruning).

Run with the vLLM venv's python (vLLM and transformers in one process):

    VLLM_PLUGINS= VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=1 \\
        .venv-vllm/bin/python scripts/measure/qwen3_vllm_vs_hf.py [CKPT_DIR] [--no-device-normalize]

Without CKPT_DIR it builds tests/vllm/tiny.py's checkpoint in a temporary folder. The same 16 frames and prompt as
tests/vllm/engine_check.py go through vLLM (hooks on its tower and LLM) and through transformers; each stage is
printed with its max |difference|: the processor (pixel values, grid, prompt ids incl. timestamp tokens), the tower
(patch embed, position-embedding interpolation, each block, merger, deepstack mergers; HF is fed vLLM's pixels so
the tower is compared on identical inputs), then the LLM inputs (M-RoPE positions, input embeddings) and the first
token's top-5 log-probs.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_PLUGINS", "")  # stock vLLM: our plugin not loaded
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "vllm"))
from engine_check import PROMPT, video  # noqa: E402

CAP: dict = {}
STAGES: list = []  # (stage, max|diff|, max|value|) of the current comparison, in pipeline order


def report(name: str, a, b) -> float:
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    if a.shape != b.shape:
        print(f"{name:<34} SHAPE {tuple(a.shape)} vs {tuple(b.shape)}")
        return float("inf")
    d = (a - b).abs().max().item() if a.numel() else 0.0
    print(f"{name:<34} max|diff| {d:.3e}   (max|value| {a.abs().max().item():.3e})")
    STAGES.append((name, d, a.abs().max().item()))
    return d


def wrap(module, key: str, rec: dict) -> None:
    """Record a module's output (its instance forward is wrapped: vLLM's compiled modules bypass nn hooks)."""
    fwd = module.forward

    def forward(*args, **kw):
        out = fwd(*args, **kw)
        rec[key] = (out[0] if isinstance(out, tuple) else out).detach().clone()
        return out
    module.forward = forward


def tower_hooks(visual, tag: str) -> None:
    """Record the tower's input, normalised input, patch embed, each block and each merger under CAP[tag]."""
    rec = CAP.setdefault(tag, {})
    fwd = visual.forward

    def forward(*args, **kw):
        vals = list(args) + [kw[k] for k in ("hidden_states", "x", "grid_thw") if k in kw]
        rec["input"] = [vals[0].detach().clone(), vals[1]]
        return fwd(*args, **kw)
    visual.forward = forward
    if hasattr(visual, "input_norm"):  # vLLM: pixels may arrive as raw uint8 and be normalised on the device
        wrap(visual.input_norm, "normalised", rec)
        norm = visual.input_norm
        rec["norm"] = (type(norm).__name__, getattr(norm, "weight", None), getattr(norm, "bias", None))
    wrap(visual.patch_embed, "patch_embed", rec)
    for i, blk in enumerate(visual.blocks):
        wrap(blk, f"block{i}", rec)
    wrap(visual.merger, "merger", rec)
    for i, m in enumerate(visual.deepstack_merger_list):
        wrap(m, f"deepstack{i}", rec)


def run_vllm(ckpt: str, frames, meta, **extra) -> dict:
    from vllm import LLM, SamplingParams

    llm = LLM(model=ckpt, enforce_eager=True, max_model_len=1024, dtype="float32", seed=0, max_num_seqs=1,
              limit_mm_per_prompt={"video": 1, "image": 0}, **extra)

    def install(model):
        tower_hooks(model.visual, "vllm")
        rec = CAP["vllm"]

        lm = model.language_model.model
        lm_fwd = lm.forward

        def lm_forward(*args, **kw):
            kw.update(zip(("input_ids", "positions", "intermediate_tensors", "inputs_embeds"), args))
            pos = kw.get("positions")
            if pos is not None and pos.shape[-1] > 1 and "positions" not in rec:
                rec["positions"] = pos.detach().clone()
                rec["inputs_embeds"] = kw["inputs_embeds"].detach().clone()
                ds = kw.get("deepstack_input_embeds")
                rec["deepstack_in"] = None if ds is None else {k: ds[k].detach().clone() for k in ds.tensors}
            return lm_fwd(**kw)
        lm.forward = lm_forward
        return True

    llm.apply_model(install)
    out = llm.generate({"prompt": PROMPT, "multi_modal_data": {"video": (frames, meta)}},
                       SamplingParams(max_tokens=1, temperature=0.0, logprobs=5))[0]
    first = out.outputs[0].logprobs[0]
    rec = CAP["vllm"]
    rec["prompt_ids"] = list(out.prompt_token_ids)
    rec["top5"] = sorted(((lp.logprob, tok) for tok, lp in first.items()), reverse=True)[:5]
    return rec


def run_hf(ckpt: str, frames, meta, pixels=None) -> dict:
    import transformers as tf

    model = tf.AutoModelForImageTextToText.from_pretrained(ckpt, dtype=torch.float32).eval()
    proc = tf.AutoProcessor.from_pretrained(ckpt)
    inputs = proc(text=[PROMPT], videos=[frames], return_tensors="pt",
                  video_metadata=[{k: meta[k] for k in ("fps", "total_num_frames", "frames_indices")}])
    tag = "hf" if pixels is None else "hf_on_vllm_pixels"
    tower_hooks(model.model.visual, tag)
    rec = CAP[tag]

    def llm_pre(m, args, kw):
        rec["positions"] = kw["position_ids"].detach().clone()
        rec["inputs_embeds"] = kw["inputs_embeds"].detach().clone()
        rec["deepstack_in"] = [x.detach().clone() for x in kw["deepstack_visual_embeds"]]
        rec["visual_pos_masks"] = kw["visual_pos_masks"].detach().clone()
    model.model.language_model.register_forward_pre_hook(llm_pre, with_kwargs=True)
    if pixels is not None:
        inputs["pixel_values_videos"] = pixels
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1].float()
    lp, tok = torch.log_softmax(logits, -1).topk(5)
    rec["top5"] = list(zip(lp.tolist(), tok.tolist()))
    rec["prompt_ids"] = inputs["input_ids"][0].tolist()
    rec["processor_pixels"] = inputs["pixel_values_videos"]
    rec["processor_grid"] = inputs["video_grid_thw"]
    return rec


def compare(v: dict, h: dict, label: str) -> None:
    print(f"\n== vLLM vs {label}")
    STAGES.clear()
    print(f"{'vLLM tower input':<34} {v['input'][0].dtype}, then vLLM's {v['norm'][0]}")
    report("pixel values (normalised)", v.get("normalised", v["input"][0]), h["input"][0])
    print(f"{'grid_thw':<34} vLLM {torch.as_tensor(v['input'][1]).tolist()}  HF {torch.as_tensor(h['input'][1]).tolist()}")
    for key in ["patch_embed"] + [k for k in v if k.startswith("block")] + ["merger"] + \
               [k for k in v if k.startswith("deepstack") and k[-1].isdigit()]:
        report(key, v[key].reshape(h[key].shape) if v[key].numel() == h[key].numel() else v[key], h[key])
    pv, ph = v["prompt_ids"], h["prompt_ids"]
    same = pv == ph
    print(f"{'prompt ids':<34} {'equal' if same else 'DIFFER'} (lengths {len(pv)} / {len(ph)})")
    if not same:
        i = next((j for j, (a, b) in enumerate(zip(pv, ph)) if a != b), min(len(pv), len(ph)))
        print(f"   first difference at {i}: vLLM {pv[i:i + 12]}  HF {ph[i:i + 12]}")
    report("M-RoPE positions (3, N)", v["positions"].reshape(3, -1), h["positions"].reshape(3, -1))
    report("LLM input embeddings", v["inputs_embeds"], h["inputs_embeds"].reshape(v["inputs_embeds"].shape))
    mask = h["visual_pos_masks"].reshape(-1)
    if v.get("deepstack_in"):
        for i, x in enumerate(h["deepstack_in"]):
            report(f"deepstack input {i} (video rows)", v["deepstack_in"][f"deepstack_input_embeds_{i}"][mask], x)
    print(f"{'top-5 ids':<34} vLLM {[t for _, t in v['top5']]}  HF {[t for _, t in h['top5']]}")
    report("top-5 log-probs", [lp for lp, _ in v["top5"]], [lp for lp, _ in h["top5"]])
    bad = [n for n, d, m in STAGES if d > 1e-4 * max(1.0, m)]  # fp32 noise stays ~1e-6 relative
    print(f"{'FIRST DIVERGENCE':<34} {bad[0] if bad else 'none (all stages within 1e-4 relative)'}")


def norm_check(ckpt: str, v: dict) -> None:
    """The normalisation each engine applied: vLLM's device-side affine (from the image processor's config, see
    vllm/model_executor/layers/fusion/mm_input_norm.py::_load_norm_params) vs the video processor's mean/std."""
    import json

    cfg = json.loads((Path(ckpt) / "processor_config.json").read_text())
    print("\n== normalisation")
    for k in ("image_processor", "video_processor"):
        print(f"{k:<34} mean {cfg[k].get('image_mean')} std {cfg[k].get('image_std')}")
    name, w, b = v["norm"]
    if w is not None:  # weight = rescale / std, bias = -mean / std
        std = (1 / 255) / w
        print(f"{'vLLM ' + name:<34} mean {(-b * std).tolist()} std {std.tolist()}")
    else:
        print(f"{'vLLM ' + name:<34} (pixels normalised by the HF processor)")


def pos_embed_check(ckpt: str, grid) -> None:
    """The two position-embedding interpolations alone, on the checkpoint's table."""
    import transformers as tf
    from transformers.vision_utils import get_vision_interpolation_indices_and_weights
    from vllm.model_executor.models.qwen3_vl import pos_embed_interpolate_native

    vis = tf.AutoModelForImageTextToText.from_pretrained(ckpt, dtype=torch.float32).model.visual
    g = torch.as_tensor(grid).reshape(-1, 3)
    idx, w = get_vision_interpolation_indices_and_weights(g, vis.num_grid_per_side, mode="bilinear", align_corners=True,
                                                          spatial_merge_size=vis.spatial_merge_size)
    hf = (vis.pos_embed(idx) * w[:, :, None]).sum(1)
    t, hh, ww = g[0].tolist()
    vl = pos_embed_interpolate_native(vis.pos_embed.weight.detach(), t, hh, ww, vis.num_grid_per_side,
                                      vis.spatial_merge_size, torch.float32)
    print("\n== position-embedding interpolation alone")
    report("pos embed (HF vs vLLM native)", vl, hf.detach())


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt", nargs="?", help="a Qwen3-VL checkpoint dir (default: build tests/vllm/tiny.py's)")
    ap.add_argument("--no-device-normalize", action="store_true", help="vLLM with mm_device_do_normalize=False")
    args = ap.parse_args()
    ckpt = args.ckpt
    if ckpt is None:
        from tiny import build
        ckpt = str(build(Path(tempfile.mkdtemp()) / "qwen3_vl", "qwen3_vl"))
    frames, meta = video("qwen3_vl")
    v = run_vllm(ckpt, frames, meta, **({"mm_device_do_normalize": False} if args.no_device_normalize else {}))
    h = run_hf(ckpt, frames, meta)
    compare(v, h, "HF (its own processor)")
    h2 = run_hf(ckpt, frames, meta, pixels=v.get("normalised", v["input"][0]).reshape(h["processor_pixels"].shape))
    compare(v, h2, "HF fed vLLM's pixel values")
    norm_check(ckpt, v)
    pos_embed_check(ckpt, v["input"][1])


if __name__ == "__main__":
    main()
