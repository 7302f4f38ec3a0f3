"""apply() on a tiny random Qwen2.5-VL: stock equality, M-RoPE positions of kept tokens, decoding position."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from tango_prune.models import apply  # noqa: E402
from tango_prune.models.zoo import tiny_model  # noqa: E402

VIDEO, VSTART, VEND = 398, 396, 395


@pytest.fixture(scope="module")
def model():
    return tiny_model("qwen2.5-vl")


def inputs(seed=0, t=2, gh=8, gw=8):
    """What the processor returns for a video of 2t frames at 112 x 112 (t temporal patches of 8 x 8 patches)."""
    g = torch.Generator().manual_seed(seed)
    n = t * gh * gw // 4
    ids = torch.tensor([[1, 5, VSTART] + [VIDEO] * n + [VEND, 4, 5]])
    return dict(input_ids=ids, pixel_values_videos=torch.randn(t * gh * gw, 3 * 2 * 14 * 14, generator=g),
                video_grid_thw=torch.tensor([[t, gh, gw]]), mm_token_type_ids=(ids == VIDEO).int() * 2,
                second_per_grid_ts=torch.tensor([1.0]))


def greedy(m, kw):
    return m.generate(**kw, max_new_tokens=5, do_sample=False)


def assert_stock_when_nothing_is_pruned(model, kw):
    """none, and tango at retention 1: the stock logits and greedy tokens, saliency from the global query."""
    logits, gen = model(**kw).logits, greedy(model, kw)
    for method, r in (("none", 1.0), ("tango", 1.0)):
        with apply(model, method, r) as h:
            assert torch.equal(model(**kw).logits, logits)
            assert torch.equal(greedy(model, kw), gen)
            assert h.last_stats[0]["saliency"] == "qwen-global-query"


def assert_batch_equals_each_alone(model, a, b, opts: dict | None = None, **extra):
    """Two videos of different lengths, left-padded into one batch under Tango at 0.25 (``opts``: more apply()
    options): each row's greedy tokens equal that video's alone. ``extra``: batched inputs the family takes besides
    pixels and grids."""
    with apply(model, "tango", 0.25, **(opts or {})):
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
            video_grid_thw=torch.cat([a["video_grid_thw"], b["video_grid_thw"]]), **extra))[:, S:]
    assert torch.equal(both[0], solo[0]) and torch.equal(both[1], solo[1])


def llm_positions(m, kw, steps=2):
    """position_ids the language model receives at prefill and the first decode steps."""
    seen = []
    hook = m.model.language_model.register_forward_pre_hook(
        lambda mod, a, k: seen.append(k["position_ids"].clone()), with_kwargs=True)
    try:
        m.generate(**kw, max_new_tokens=steps, do_sample=False)
    finally:
        hook.remove()
    return seen


def test_none_and_full_retention_match_the_stock_model(model):
    assert_stock_when_nothing_is_pruned(model, inputs(0))


def test_kept_tokens_keep_their_3d_positions_and_decoding_continues_at_the_stock_position(model):
    kw = inputs(1)
    stock = llm_positions(model, kw)
    with apply(model, "tango", 0.25) as h:
        pruned = llm_positions(model, kw)
        kept = h.last_stats[0]["tokens_kept"]
    assert kept == 8
    prefill_stock, prefill = stock[0][-3:, 0], pruned[0][-3:, 0]  # M-RoPE rows (t, h, w)
    assert prefill.shape[-1] == kw["input_ids"].shape[1] - 32 + kept
    # every kept position's (t, h, w) is one the stock model gave a token; the text after the video keeps its own
    stock_cols = {tuple(c) for c in prefill_stock.T.tolist()}
    assert all(tuple(c) in stock_cols for c in prefill.T.tolist())
    assert torch.equal(prefill[:, -3:], prefill_stock[:, -3:])
    # the first generated token sits where the stock model puts it
    assert torch.equal(pruned[1][-3:, 0, -1], stock[1][-3:, 0, -1])
    # row 0 counts the shortened sequence contiguously (it drives the causal mask)
    assert torch.equal(pruned[0][0, 0], torch.arange(prefill.shape[-1]))


def test_generate_contract_and_remove(model):
    kw = inputs(2)
    stock = greedy(model, kw)
    with apply(model, "tango", 0.1):
        out = greedy(model, kw)
        text = model(input_ids=torch.tensor([[1, 5, 6]])).logits
    assert torch.equal(out[:, : kw["input_ids"].shape[1]], kw["input_ids"])
    assert torch.equal(model(input_ids=torch.tensor([[1, 5, 6]])).logits, text)
    assert torch.equal(greedy(model, kw), stock)


def test_features_saliency_and_missing_grid(model):
    kw = inputs(3)
    with apply(model, "tango", 0.25, saliency="features") as h:
        model(**kw)
        assert h.last_stats[0]["saliency"] == "feature-distinctiveness"
        kw.pop("video_grid_thw")
        with pytest.raises(ValueError, match="video_grid_thw"):
            model(**kw)


def test_batch_of_two_videos_of_different_lengths_matches_each_alone(model):
    assert_batch_equals_each_alone(model, inputs(4, t=2), inputs(5, t=1, gh=8, gw=12),
                                   second_per_grid_ts=torch.tensor([1.0, 1.0]))


def test_qwen2_vl_matches_stock_and_prunes():
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.Qwen2VLConfig(
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=400, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4}),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=397, video_token_id=VIDEO, vision_start_token_id=VSTART, vision_end_token_id=VEND)
    m = tf.Qwen2VLForConditionalGeneration(cfg).eval()
    kw = inputs(6)
    kw.pop("second_per_grid_ts")  # Qwen2-VL has no temporal spacing input
    logits, gen = m(**kw).logits, greedy(m, kw)
    with apply(m, "none") as h:
        assert torch.equal(m(**kw).logits, logits) and torch.equal(greedy(m, kw), gen)
        assert h.last_stats[0]["saliency"] == "qwen-global-query"
    with apply(m, "tango", 0.25) as h:
        out = greedy(m, kw)
        assert h.last_stats[0]["tokens_kept"] == 8 and torch.equal(out[:, : kw["input_ids"].shape[1]], kw["input_ids"])


def test_each_kept_token_gets_its_own_3d_position(model):
    """Not just some video position: the (t, h, w) the stock model gives that very token (a compacted run must not
    hand kept token j the position of the run's j-th placeholder)."""
    kw = inputs(1)
    stock = llm_positions(model, kw)[0][-3:, 0]
    with apply(model, "tango", 0.25) as h:
        pruned = llm_positions(model, kw)[0][-3:, 0]
        kept = h.pruner(h.encode_videos(**inputs(1))[0])
    video = (kw["input_ids"][0] == VIDEO).nonzero().flatten()
    assert not torch.equal(kept.index, torch.arange(kept.num_kept))  # the check below could not tell otherwise
    assert torch.equal(pruned[:, 3 : 3 + kept.num_kept], stock[:, video[kept.index]])
