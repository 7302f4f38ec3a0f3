"""The encoder stage inside vLLM's Qwen towers (integrations/vllm/encoder_stage.py), checked in one engine on a tiny
checkpoint (run with the vLLM venv's python; the caller sets TANGO_PRUNE_METHOD=tango and TANGO_PRUNE_OPTIONS with
an ``encoder``):

    python tests/vllm/stage_check.py --family qwen2_5_vl --model DIR --out OUT.json --rate 0.9

On vLLM's own tower modules (``LLM.apply_model``), every block past the gate staged (gate_layer 0), fp32:
  * ``repeated``: a video whose temporal patches are all alike, through the stage = the stock tower (max |diff|);
  * ``tau1``: random patches at tau 1 = the stock tower;
  * ``composite``: a given pattern (half of temporal patch 1's rows computed): at every block, the computed rows'
    outputs, and at the last block their queries and keys, against the stock block run on the composite temporal
    patch (the key's input at reused positions, the rows' own at computed ones), per block (max |diff|);
  * ``halo``: one patch of temporal patch 1 changed (picked on the raster grid, placed at its row in the processor's
    merge-group order): with halo 1 the schedule computes its 3 x 3 square, read back to the raster grid through
    the tower's row order (Qwen2.5-VL's windows), i.e. the halo spreads on the image, not on the row list;
  * ``batch``: two videos of two sizes through the plugin's ``_process_video_input`` at once = each alone (rows and
    saliency, max |diff|).
Through the engine (greedy, 4 tokens, top-5 log-probs): a repeated-frames video with the stage = without it (the
stage switched off on the model, the same frames under a new media id), and a random video asked twice.
``--chunked`` (the caller adds chunk_frames 2): the engine asks only, the frames repeated within each chunk of 4.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_check import DTYPE, PROMPT, check_parser, video  # noqa: E402


def tower_checks(model) -> dict:
    from tango_prune.encoders.reuse import ReuseConfig
    from tango_prune.integrations.vllm.encoder_stage import stage_blocks
    from tango_prune.integrations.vllm.qk_capture import capture_qk

    visual = model.visual
    dev, dtype = visual.device, visual.dtype
    t, h, w = 4, 16, 16
    N = h * w
    vc = model.config.vision_config
    width = vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2
    g = torch.Generator().manual_seed(0)
    rand = torch.randn(t * N, width, generator=g).to(dev, dtype)
    out = {}
    # random init leaves attention near uniform (tiny logits): which keys a query sees would hardly show. Sharper
    # queries and keys make every check below see a wrong key, position or window: the attention input's norm scaled
    # (vLLM's CPU linear layers run prepacked copies of their weights, so scaling qkv itself would change nothing)
    for blk in visual.blocks:
        blk.norm1.weight.data *= 3

    def tower(px, cfg=None, given=None, grid=(t, h, w)):
        if cfg is None:
            return visual(px, grid_thw=[list(grid)]), None
        with stage_blocks(visual, cfg, grid, 1, given) as plan:
            return visual(px, grid_thw=[list(grid)]), plan

    def diff(a, b):
        return float((a.float() - b.float()).abs().max())

    with torch.no_grad():
        rep = rand[:N].repeat(t, 1)
        stage, plan = tower(rep, ReuseConfig(tau=0.95, gate_layer=0))
        out["repeated"] = {"diff": diff(stage, tower(rep)[0]), "equal": bool(torch.equal(stage, tower(rep)[0])),
                           "computed": float(plan.computed.float().mean()), "keys": int(plan.key.numel())}
        stage, plan = tower(rand, ReuseConfig(tau=1.0, gate_layer=0))
        out["tau1"] = {"diff": diff(stage, tower(rand)[0]), "keys": int(plan.key.numel())}

        # composite: temporal patch 1 refers to patch 0 and computes half of its rows (every other one)
        two = rand[:2 * N]
        given = torch.ones(2, N, dtype=torch.bool, device=dev)
        given[1] = torch.arange(N, device=dev) % 2 == 0
        seen = []
        cfg = ReuseConfig(gate_layer=0)
        with stage_blocks(visual, cfg, (2, h, w), 1, given) as plan:
            hooks = [b.register_forward_hook(lambda m, a, o: seen.append((a[0].clone(), o.clone()))) for b in visual.blocks]
            visual(two, grid_thw=[[2, h, w]])
            for k in hooks:
                k.remove()
            stock = visual.blocks  # the wrappers; the stock modules inside them
        one = visual.prepare_encoder_metadata([[1, h, w]])
        full = set(getattr(visual, "fullatt_block_indexes", range(len(stock))))
        rows = plan.dep_rows - N  # the computed rows' positions in temporal patch 1
        per_block = []
        for i, (x, y) in enumerate(seen):
            comp = x[:N].clone()
            comp[rows] = x[N:][rows]
            kind = "" if "cu_window_seqlens" not in one else ("_full" if i in full else "_window")
            cu = one["cu_seqlens"] if kind in ("", "_full") else one["cu_window_seqlens"]
            blk = stock[i].block
            with capture_qk(blk.attn.attn) as cap:
                ref = blk(comp, cu_seqlens=cu, rotary_pos_emb_cos=one["rotary_pos_emb_cos"],
                          rotary_pos_emb_sin=one["rotary_pos_emb_sin"], max_seqlen=one["max_seqlen" + kind],
                          sequence_lengths=one.get("sequence_lengths" + kind))
            per_block.append(diff(y[N:][rows], ref[rows]) / float(ref[rows].abs().max()))
        q, k = plan.qk
        out["composite"] = {"block_rel_diff": per_block, "rows": int(rows.numel()),
                            "q_diff": diff(q[N:][rows], cap["q"][0][0][rows]),
                            "k_diff": diff(k[N:][rows], cap["k"][0][0][rows])}

        from tango_prune.integrations.vllm.encoder_stage import tower_rows

        m = visual.spatial_merge_size
        proc = torch.arange(N).view(h // m, m, w // m, m).permute(0, 2, 1, 3).flatten()  # the processor's row order
        r, c = 5, 9
        moved = rand[:N].repeat(t, 1)
        at = int((proc == r * w + c).nonzero())
        moved[N + at] = 100 * rand[2 * N + at]
        # the tiny towers' patch embeddings hardly move with their input (cosine 0.99993 for a new random row): a row
        # 100 times larger, and tau just below 1, tell the changed row (identical rows have cosine 1) from the rest
        _, plan = tower(moved, ReuseConfig(tau=0.9999, gate_layer=0, halo=1, key_share=1.0))
        raster = torch.zeros(N, dtype=torch.bool)
        raster[tower_rows(visual, h, w)] = plan.computed[1].cpu()
        want = torch.zeros(h, w, dtype=torch.bool)
        want[r - 1:r + 2, c - 1:c + 2] = True
        out["halo"] = {"square": bool(torch.equal(raster, want.flatten())), "computed": int(raster.sum()),
                       "others": int(plan.computed[2:].sum())}

        # two videos of two sizes in one call = each alone (the plugin's own entry point, the stage from the env)
        small = (2, 8, 8)
        vids = [(rand, (t, h, w)), (rand[:small[0] * 64] * 0.5, small)]

        def call(items):
            px = torch.cat([p for p, _ in items])
            grid = torch.tensor([list(s) for _, s in items])
            inp = {"type": "pixel_values_videos", "pixel_values_videos": px, "video_grid_thw": grid}
            embs = model._process_video_input(inp)
            return embs, model._tango_pending

        both, sal_both = call(vids)
        alone = [call([v]) for v in vids]
        out["batch"] = {"rows_diff": max(diff(a[0][0], b) for a, b in zip(alone, both)),
                        "saliency_diff": max(diff(a[1][0], b) for a, b in zip(alone, sal_both))}
    return out


def ask_fn(llm, meta):
    """ask(frames, media id) -> the request's prompt ids, 4 greedy tokens and the first token's top-5 log-probs."""
    from vllm import SamplingParams

    def ask(frames, uuid: str) -> dict:
        prompt = {"prompt": PROMPT, "multi_modal_data": {"video": (frames, meta)}, "multi_modal_uuids": {"video": [uuid]}}
        out = llm.generate(prompt, SamplingParams(max_tokens=4, temperature=0.0, logprobs=5), use_tqdm=False)[0]
        top = sorted(((lp.logprob, tok) for tok, lp in out.outputs[0].logprobs[0].items()), reverse=True)[:5]
        return {"prompt_token_ids": list(out.prompt_token_ids), "generated": list(out.outputs[0].token_ids),
                "top5": [[t, lp] for lp, t in top]}
    return ask


def main() -> None:
    from vllm import LLM

    ap = check_parser(["qwen2_5_vl", "qwen3_vl", "qwen3_5"])
    # the caller adds chunk_frames 2 (4 frames a chunk): no tower checks (they run unchunked); the frames repeat within
    # each chunk and differ across chunks (each chunk's first temporal patch must be a key)
    ap.add_argument("--chunked", action="store_true")
    args = ap.parse_args()
    llm = LLM(model=args.model, enforce_eager=True, max_model_len=1024, dtype=DTYPE.get(args.family, "float32"), seed=0, max_num_seqs=1,
              limit_mm_per_prompt={"video": 1, "image": 0}, video_pruning_rate=args.rate)
    result = {} if args.chunked else {"tower": llm.apply_model(tower_checks)[0]}
    frames, meta = video(args.family)
    repeated = np.repeat(frames[::4], 4, axis=0) if args.chunked else np.repeat(frames[:1], len(frames), axis=0)

    ask = ask_fn(llm, meta)
    result["repeated"] = ask(repeated, "rep-stage")
    result["random"] = ask(frames, "random")
    result["random_again"] = ask(frames, "random")
    saved = llm.apply_model(lambda m: m._tango_encoder)[0]
    llm.apply_model(lambda m: setattr(m, "_tango_encoder", None))
    result["repeated_off"] = ask(repeated, "rep-off")
    llm.apply_model(lambda m: setattr(m, "_tango_encoder", saved))
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
