"""apply() on tiny random Qwen3.5 models, dense and MoE (hybrid LLM: a gated delta net layer, then a full attention
layer): stock equality, the LLM sequence, per-frame placeholder runs, no deepstack, video_tokens=, positions and
decoding, batches, remove()."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from tango_prune.models import apply  # noqa: E402
from tango_prune.models.qwen_vl import Qwen3_5Handle  # noqa: E402
from tango_prune.models.zoo import tiny_model  # noqa: E402

VIDEO, VSTART, VEND = 398, 396, 395
STAMP = [7, 8, 9]  # stands for a frame's "<0.5 seconds>" text
FAMILIES = ("qwen3.5", "qwen3.5-moe")


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return tiny_model(request.param)


def inputs(seed=0, t=3, gh=8, gw=8):
    """What the processor returns for 2t frames of (16 gh) x (16 gw) px: per temporal patch, a timestamp, then
    <|vision_start|>, gh gw / 4 placeholders, <|vision_end|> (Qwen3-VL's layout, which Qwen3.5 shares)."""
    g = torch.Generator().manual_seed(seed)
    n = gh * gw // 4
    ids = [1, 5]
    for _ in range(t):
        ids += STAMP + [VSTART] + [VIDEO] * n + [VEND]
    ids = torch.tensor([ids + [4, 5]])
    return dict(input_ids=ids, pixel_values_videos=torch.randn(t * gh * gw, 3 * 2 * 16 * 16, generator=g),
                video_grid_thw=torch.tensor([[t, gh, gw]]), mm_token_type_ids=(ids == VIDEO).int() * 2)


def greedy(m, kw, n=5):
    return m.generate(**kw, max_new_tokens=n, do_sample=False)


def seen_by_llm(m, kw, steps=2):
    """What the language model receives at prefill and the first decode steps."""
    seen = []
    hook = m.model.language_model.register_forward_pre_hook(
        lambda mod, a, k: seen.append({key: k.get(key) for key in ("position_ids", "inputs_embeds")} | {"kw": set(k)}),
        with_kwargs=True)
    try:
        greedy(m, kw, steps)
    finally:
        hook.remove()
    return seen


def test_the_model_is_what_the_tests_claim(model):
    """The tiny model has the parts that make Qwen3.5 differ: hybrid layers, no deepstack, MoE where named."""
    text = model.config.text_config
    assert text.layer_types == ["linear_attention", "full_attention"]
    assert hasattr(model.model.language_model.layers[0], "linear_attn")
    assert not hasattr(model.model.visual, "deepstack_merger_list")
    moe = type(model).__name__ == "Qwen3_5MoeForConditionalGeneration"
    assert moe == hasattr(model.model.language_model.layers[0].mlp, "experts")
    with apply(model, "tango", 0.25) as h:
        assert type(h) is Qwen3_5Handle


def test_none_and_full_retention_match_the_stock_model(model):
    kw = inputs(0)
    logits, gen = model(**kw).logits, greedy(model, kw)
    for method, r in (("none", 1.0), ("tango", 1.0)):
        with apply(model, method, r) as h:
            assert torch.equal(model(**kw).logits, logits)
            assert torch.equal(greedy(model, kw), gen)
            assert h.last_stats[0]["saliency"] == "qwen-global-query"


def test_sequence_is_text_plus_kept_and_each_frame_keeps_its_own_run(model):
    kw = inputs(1)
    text = int((kw["input_ids"] != VIDEO).sum())
    with apply(model, "tango", 0.1) as h:
        seen = seen_by_llm(model, kw)
        vt = h.encode_videos(**inputs(1))[0]
        kept = h.pruner(vt)
    K = h.last_stats[0]["tokens_kept"]
    assert K == kept.num_kept < vt.num_tokens and seen[0]["inputs_embeds"].shape[1] == text + K
    # the video's rows of the LLM input are the kept (merged) features, in each frame's own run, in order
    emb = seen[0]["inputs_embeds"][0]
    per_frame = torch.bincount(kept.positions[:, 0], minlength=3)
    assert per_frame.sum() == K
    rows, a = [], 2
    for f in range(3):
        a += len(STAMP) + 1
        rows.append(emb[a : a + int(per_frame[f])])
        a += int(per_frame[f]) + 1
    torch.testing.assert_close(torch.cat(rows), kept.features, rtol=0, atol=0)
    # no deepstack: the LLM gets no visual masks or deepstack features (Qwen3-VL's text model takes them)
    assert not {"visual_pos_masks", "deepstack_visual_embeds"} & seen[0]["kw"]


def test_given_video_tokens_equal_pixels(model):
    """video_tokens= (rejected for Qwen3-VL, whose deepstack it lacks) works here: the same logits as pixels."""
    kw = inputs(2)
    with apply(model, "tango", 0.25) as h:
        vts = h.encode_videos(**kw)
        from_pixels = model(**kw).logits
        given = model(input_ids=kw["input_ids"], video_tokens=vts, video_grid_thw=kw["video_grid_thw"],
                      mm_token_type_ids=kw["mm_token_type_ids"]).logits
    assert torch.equal(given, from_pixels)


def test_kept_tokens_keep_their_own_positions_and_decoding_continues_at_the_stock_position(model):
    kw = inputs(3)
    stock = seen_by_llm(model, kw)
    with apply(model, "tango", 0.25) as h:
        pruned = seen_by_llm(model, kw)
        kept = h.pruner(h.encode_videos(**inputs(3))[0])
    ids = kw["input_ids"][0]
    video = (ids == VIDEO).nonzero().flatten()
    s_pos, p_pos = stock[0]["position_ids"][-3:, 0], pruned[0]["position_ids"][-3:, 0]
    # the shortened sequence: each frame's run holds that frame's kept tokens
    short = torch.cat([ids[:2]] + [torch.tensor(STAMP + [VSTART] + [VIDEO] * int(c) + [VEND])
                                   for c in torch.bincount(kept.positions[:, 0], minlength=3)] + [ids[-2:]])
    assert p_pos.shape[1] == short.shape[0] == int((ids != VIDEO).sum()) + kept.num_kept
    vis = short == VIDEO
    assert torch.equal(p_pos[:, vis], s_pos[:, video[kept.index]])
    assert torch.equal(p_pos[:, ~vis][:, -2:], s_pos[:, -2:])  # the text after the video keeps its own positions
    assert torch.equal(pruned[1]["position_ids"][-3:, 0, -1], stock[1]["position_ids"][-3:, 0, -1])


def test_batch_of_two_videos_of_different_lengths_matches_each_alone(model):
    a, b = inputs(4, t=3), inputs(5, t=2, gh=8, gw=12)
    with apply(model, "tango", 0.25):
        solo = [greedy(model, kw)[0, kw["input_ids"].shape[1]:] for kw in (a, b)]
        S = max(a["input_ids"].shape[1], b["input_ids"].shape[1])
        ids = torch.zeros(2, S, dtype=torch.long)
        mask = torch.zeros(2, S, dtype=torch.long)
        for i, kw in enumerate((a, b)):  # left padding
            n = kw["input_ids"].shape[1]
            ids[i, S - n:], mask[i, S - n:] = kw["input_ids"][0], 1
        both = greedy(model, dict(
            input_ids=ids, attention_mask=mask, mm_token_type_ids=(ids == VIDEO).int() * 2,
            pixel_values_videos=torch.cat([a["pixel_values_videos"], b["pixel_values_videos"]]),
            video_grid_thw=torch.cat([a["video_grid_thw"], b["video_grid_thw"]])))[:, S:]
    assert torch.equal(both[0], solo[0]) and torch.equal(both[1], solo[1])


def test_remove_restores_the_stock_model_and_every_method_runs(model):
    kw = inputs(6)
    logits = model(**kw).logits
    for name in ("uniform", "topk", "visionzip", "holitom", "tango"):
        h = apply(model, name, 0.25)
        out = model(**kw).logits
        assert out.shape == logits.shape and torch.isfinite(out).all()
        h.remove()
    assert torch.equal(model(**kw).logits, logits)
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__


# -- bench --arch: the Qwen3.5 shape ---------------------------------------------------------------------------------
def test_hybrid_prefill_flops_by_hand():
    from types import SimpleNamespace

    from tango_prune.bench.archs import hybrid_prefill_flops

    t = SimpleNamespace(hidden_size=2, intermediate_size=3, num_attention_heads=1, num_key_value_heads=1, head_dim=2,
                        linear_num_key_heads=1, linear_key_head_dim=1, linear_num_value_heads=1, linear_value_head_dim=2,
                        linear_conv_kernel_dim=2, num_hidden_layers=2, layer_types=["linear_attention", "full_attention"],
                        vocab_size=5)
    # 2 tokens. MLP 2*2*3*2*3 = 72 per layer. Full: q+gate 2*2*(2*4) = 32, k and v 2*2*(2*4) = 32, o 2*2*4 = 16,
    # causal attention 2*2*3*2 = 24 -> 176. Linear: qkv (4 wide) 2*2*8 = 32, z 2*2*4 = 16, b and a 2*2*4 = 16,
    # out 2*2*4 = 16, conv 2*2*2*4 = 32, delta rule 2*3*2*1*1*2 = 24 -> 208. LM head 2*2*5 = 20.
    assert hybrid_prefill_flops(2, t) == 176 + 208 + 20


def test_bench_runs_on_a_qwen3_5_shape(monkeypatch, tmp_path):
    import json

    from tango_prune.bench import archs
    from tango_prune.cli import main

    fam, vis, txt = archs.ARCHS["qwen3.5-9b"]
    assert fam == "qwen3" and archs.is_hybrid(txt) and "deepstack_visual_indexes" not in vis
    assert (txt["hidden_size"], txt["num_hidden_layers"], txt["head_dim"], vis["out_hidden_size"]) == (4096, 32, 256, 4096)
    tiny_vis = dict(vis, depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                    num_position_embeddings=64)
    tiny_txt = dict(txt, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, vocab_size=400, linear_num_key_heads=2, linear_num_value_heads=4,
                    linear_key_head_dim=16, linear_value_head_dim=16)
    monkeypatch.setitem(archs.ARCHS, "tiny-qwen3.5", ("qwen3", tiny_vis, tiny_txt))
    out = tmp_path / "b.json"
    assert main(["bench", "--arch", "tiny-qwen3.5", "--frames", "4", "--methods", "none,tango", "--retention", "0.25",
                 "--repeats", "1", "--decode-tokens", "2", "--json", str(out), "--quiet"]) == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["tango"]["flops_llm"] < rows["none"]["flops_llm"] and rows["tango"]["decode_tok_s"] > 0
    assert main(["bench", "--arch", "tiny-qwen3.5", "--frames", "4", "--methods", "none", "--layers", "2",
                 "--json", str(out), "--quiet"]) == 2  # 2 layers cannot keep 3 linear + 1 full attention
