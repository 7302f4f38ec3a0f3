"""The encoder stage inside vLLM's SigLIP tower for LLaVA-OneVision (integrations/vllm/encoder_stage_llava.py), checked
in one engine on the tiny checkpoint (vLLM venv; the caller sets TANGO_PRUNE_METHOD=tango and TANGO_PRUNE_OPTIONS
with an ``encoder``):

    python tests/vllm/stage_check_llava.py DIR OUT.json [chunked]

The same checks as tests/vllm/stage_check.py (Qwen) with a frame for a temporal patch: on vLLM's own tower modules
(every layer past the gate staged): repeated frames = the stock tower, tau 1 = stock, the computed rows = vLLM's stock
layer on the composite frame at every layer, two videos of two lengths through the plugin's ``_process_video_pixels``
at once = each alone; through the engine: repeated frames with the stage = without it, a video asked twice.
``chunked`` (the caller adds chunk_frames 2): the engine asks only, the frames repeated within each chunk.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import tiny_llava  # noqa: E402
from check_llava import engine  # noqa: E402


def tower_checks(model) -> dict:
    from tango_prune.encoders.reuse import ReuseConfig
    from tango_prune.integrations.vllm.encoder_stage_llava import stage_layers

    tower = model.vision_tower
    encoder = tower.vision_model.encoder
    strategy = model.config.vision_feature_select_strategy
    # sharper attention (random init leaves it near uniform), through the norm before it: vLLM's CPU linear layers
    # run prepacked copies of their weights
    for layer in encoder.layers:
        layer.layer_norm1.weight.data *= 3
    p = next(tower.parameters())
    g = torch.Generator().manual_seed(0)
    T = 4
    frames = torch.randn(T, 3, tiny_llava.SIDE, tiny_llava.SIDE, generator=g).to(p.device, p.dtype)
    out = {}

    def run(px, cfg=None, given=None):
        if cfg is None:
            return tower(px, feature_select_strategy=strategy), None
        with stage_layers(encoder, cfg, px.shape[0], 1, given) as plan:
            return tower(px, feature_select_strategy=strategy), plan

    def diff(a, b):
        return float((a.float() - b.float()).abs().max())

    with torch.no_grad():
        rep = frames[:1].repeat(T, 1, 1, 1)
        stage, plan = run(rep, ReuseConfig(tau=0.95, gate_layer=0))
        out["repeated"] = {"diff": diff(stage, run(rep)[0]), "computed": float(plan.computed.float().mean()),
                           "keys": int(plan.key.numel())}
        stage, plan = run(frames, ReuseConfig(tau=1.0, gate_layer=0))
        out["tau1"] = {"diff": diff(stage, run(frames)[0]), "keys": int(plan.key.numel())}

        side = tiny_llava.SIDE // 14
        moved = rep.clone()  # one 14 x 14 patch of frame 1 changed: halo 1 computes its 3 x 3 square
        moved[1, :, 2 * 14:3 * 14, 4 * 14:5 * 14] = frames[1, :, 2 * 14:3 * 14, 4 * 14:5 * 14]
        _, plan = run(moved, ReuseConfig(tau=0.95, gate_layer=0, halo=1, key_share=1.0))
        want = torch.zeros(side, side, dtype=torch.bool)
        want[1:4, 3:6] = True
        out["halo"] = {"square": bool(torch.equal(plan.computed[1].cpu(), want.flatten())),
                       "computed": int(plan.computed[1].sum()), "others": int(plan.computed[2:].sum())}

        two = frames[:2]
        N = side ** 2
        given = torch.ones(2, N, dtype=torch.bool)
        given[1] = torch.arange(N) % 2 == 0
        seen = []
        with stage_layers(encoder, ReuseConfig(gate_layer=0), 2, 1, given) as plan:
            hooks = [layer.register_forward_hook(lambda m, a, o: seen.append((a[0].clone(), o[0].clone())))
                     for layer in encoder.layers]
            tower(two, feature_select_strategy=strategy)
            for h in hooks:
                h.remove()
            wrappers = list(encoder.layers)
        rows = torch.arange(N, device=p.device)[given[1].to(p.device)]
        per_layer = []
        for (x, y), w in zip(seen, wrappers):
            comp = x[:1].clone()
            comp[0, rows] = x[1, rows]
            ref, _ = w.layer(comp)
            per_layer.append(diff(y[1, rows], ref[0, rows]) / float(ref[0, rows].abs().max()))
        out["composite"] = {"layer_rel_diff": per_layer, "rows": int(rows.numel())}

        videos = [frames, frames[:2] * 0.5]
        both = model._process_video_pixels({"pixel_values_videos": videos})
        alone = [model._process_video_pixels({"pixel_values_videos": [v]})[0] for v in videos]
        out["batch"] = {"rows_diff": max(diff(a, b) for a, b in zip(alone, both))}
    return out


def main() -> None:
    from vllm import SamplingParams

    ckpt, dest = sys.argv[1], Path(sys.argv[2])
    chunked = sys.argv[3:] == ["chunked"]  # TANGO_PRUNE_OPTIONS has chunk_frames 2: no tower checks (they run unchunked)
    llm = engine(ckpt)
    result = {} if chunked else {"tower": llm.apply_model(tower_checks)[0]}
    video = tiny_llava.video()
    # chunked: frames alike within each chunk of 2, different across chunks (each chunk's first frame must be a key)
    repeated = np.repeat(video[::2], 2, axis=0)[:len(video)] if chunked else np.repeat(video[:1], len(video), axis=0)

    def ask(frames, uuid: str) -> dict:
        prompt = {"prompt": tiny_llava.PROMPT, "multi_modal_data": {"video": frames},
                  "multi_modal_uuids": {"video": [uuid]}}
        o = llm.generate(prompt, SamplingParams(max_tokens=1, temperature=0.0, logprobs=5), use_tqdm=False)[0]
        top = sorted(o.outputs[0].logprobs[0].items(), key=lambda kv: -kv[1].logprob)
        return {"prompt_ids": list(o.prompt_token_ids), "top5": [[int(t), float(lp.logprob)] for t, lp in top[:5]]}

    result["repeated"] = ask(repeated, "rep-stage")
    result["random"], result["random_again"] = ask(video, "v"), ask(video, "v")
    saved = llm.apply_model(lambda m: m._tango_encoder)[0]
    llm.apply_model(lambda m: setattr(m, "_tango_encoder", None))
    result["repeated_off"] = ask(repeated, "rep-off")
    llm.apply_model(lambda m: setattr(m, "_tango_encoder", saved))
    dest.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
