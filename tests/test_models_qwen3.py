"""apply() on tiny random Qwen3-VL and Qwen3.5 models, dense and MoE each (Qwen3.5: Qwen3-VL's tower without deepstack,
a hybrid LLM of a gated delta net layer then a full attention layer): stock equality, the LLM sequence, per-frame
placeholder runs, deepstack features pruned with the kept rows (Qwen3-VL), video_tokens= (Qwen3.5; refused where
deepstack needs the tower), positions and decoding, batches, remove(); bench at the Qwen3.5 shape."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from tango_prune.core.carry import carry  # noqa: E402
from tango_prune.models import apply  # noqa: E402
from tango_prune.models.qwen_vl import Qwen3_5Handle, Qwen3VLHandle  # noqa: E402
from tango_prune.models.zoo import tiny_model  # noqa: E402

from .test_models_qwen import assert_batch_equals_each_alone, assert_stock_when_nothing_is_pruned  # noqa: E402

VIDEO, VSTART, VEND = 398, 396, 395
STAMP = [7, 8, 9]  # stands for a frame's "<0.5 seconds>" text
DEEPSTACK, HYBRID = ("qwen3-vl", "qwen3-vl-moe"), ("qwen3.5", "qwen3.5-moe")
_built: dict = {}


def _model(family):
    if family not in _built:  # one build per family for the whole module, whichever fixture asks first
        _built[family] = tiny_model(family)
    return _built[family]


@pytest.fixture(scope="module", params=DEEPSTACK + HYBRID)
def model(request):
    return _model(request.param)


@pytest.fixture(scope="module", params=DEEPSTACK)
def deepstack_model(request):
    return _model(request.param)


def has_deepstack(model) -> bool:
    return hasattr(model.model.visual, "deepstack_merger_list")


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
    """What the language model receives at prefill and the first decode steps (and which keywords it got)."""
    seen = []
    keys = ("position_ids", "inputs_embeds", "visual_pos_masks", "deepstack_visual_embeds")
    hook = m.model.language_model.register_forward_pre_hook(
        lambda mod, a, k: seen.append({key: k.get(key) for key in keys} | {"kw": set(k)}), with_kwargs=True)
    try:
        greedy(m, kw, steps)
    finally:
        hook.remove()
    return seen


def test_the_model_is_what_the_tests_claim(model):
    """The tiny models have the parts the tests rely on: deepstack in Qwen3-VL only, hybrid layers in Qwen3.5, MoE
    where named, and apply() picks the family's handle."""
    hybrid = model.config.text_config.model_type.startswith("qwen3_5")
    assert has_deepstack(model) == (not hybrid)
    if hybrid:
        assert model.config.text_config.layer_types == ["linear_attention", "full_attention"]
        assert hasattr(model.model.language_model.layers[0], "linear_attn")
    moe = "Moe" in type(model).__name__
    assert moe == hasattr(model.model.language_model.layers[0].mlp, "experts")
    with apply(model, "tango", 0.25) as h:
        assert type(h) is (Qwen3_5Handle if hybrid else Qwen3VLHandle)


def test_none_and_full_retention_match_the_stock_model(model):
    assert_stock_when_nothing_is_pruned(model, inputs(0))


def test_sequence_is_text_plus_kept_and_each_frame_keeps_its_own_run(model):
    kw = inputs(1)
    text = int((kw["input_ids"] != VIDEO).sum())
    with apply(model, "tango", 0.1) as h:
        seen = seen_by_llm(model, kw)
        vt = h.encode_videos(**inputs(1))[0]
        kept = h.pruner(vt)
    K = h.last_stats[0]["tokens_kept"]
    assert K == kept.num_kept < vt.num_tokens and seen[0]["inputs_embeds"].shape[1] == text + K
    # the video's rows of the LLM input are the kept (merged) features, in each frame's own run (between its
    # <|vision_start|> and <|vision_end|>), in order
    emb = seen[0]["inputs_embeds"][0]
    per_frame = torch.bincount(kept.positions[:, 0], minlength=3)
    assert per_frame.sum() == K
    rows, runs, a = [], torch.zeros(emb.shape[0], dtype=torch.bool), 2
    for f in range(3):
        a += len(STAMP) + 1
        rows.append(emb[a : a + int(per_frame[f])])
        runs[a : a + int(per_frame[f])] = True
        a += int(per_frame[f]) + 1
    torch.testing.assert_close(torch.cat(rows), kept.features, rtol=0, atol=0)
    if has_deepstack(model):  # the deepstack mask marks exactly those runs
        assert torch.equal(seen[0]["visual_pos_masks"][0], runs)
    else:  # the LLM gets no visual masks or deepstack features (Qwen3-VL's text model takes them)
        assert not {"visual_pos_masks", "deepstack_visual_embeds"} & seen[0]["kw"]


def test_deepstack_levels_are_pruned_with_the_kept_rows(deepstack_model):
    model, kw = deepstack_model, inputs(2)
    with torch.no_grad():
        stock = model.model.visual(kw["pixel_values_videos"], grid_thw=kw["video_grid_thw"]).deepstack_features
    with apply(model, "tango", 0.25) as h:
        seen = seen_by_llm(model, kw, steps=1)
        kept = h.pruner(h.encode_videos(**inputs(2))[0])
    got = seen[0]["deepstack_visual_embeds"]
    assert len(got) == len(stock) == 2
    for level, full in zip(got, stock):
        assert level.shape[0] == kept.num_kept
        torch.testing.assert_close(level, carry(kept, full))
        unmerged = ~kept.merged
        assert torch.equal(level[unmerged], full[kept.index[unmerged]])  # selected rows: exactly the stock rows


def test_given_video_tokens_equal_pixels_or_are_refused_where_deepstack_needs_the_tower(model):
    """video_tokens= gives the same logits as pixels (Qwen3.5); Qwen3-VL refuses it in one line: its deepstack
    features come from inside the tower, which given tokens lack."""
    kw = inputs(2)
    with apply(model, "tango", 0.25) as h:
        vts = h.encode_videos(**kw)
        from_pixels = model(**kw).logits
        given = dict(input_ids=kw["input_ids"], video_tokens=vts, video_grid_thw=kw["video_grid_thw"],
                     mm_token_type_ids=kw["mm_token_type_ids"])
        if has_deepstack(model):
            with pytest.raises(ValueError, match="deepstack"):
                model(**given)
        else:
            assert torch.equal(model(**given).logits, from_pixels)


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
    assert_batch_equals_each_alone(model, inputs(4, t=3), inputs(5, t=2, gh=8, gw=12))


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
