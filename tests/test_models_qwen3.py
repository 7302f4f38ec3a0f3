"""apply() on a tiny random Qwen3-VL: stock equality, the LLM sequence, deepstack features pruned with the kept
rows, per-frame placeholder runs, batches, remove(), decoding position."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from tango_prune import get_method  # noqa: E402
from tango_prune.core.carry import carry  # noqa: E402
from tango_prune.models import apply  # noqa: E402
from tango_prune.models.zoo import tiny_model  # noqa: E402

VIDEO, VSTART, VEND = 398, 396, 395
STAMP = [7, 8, 9]  # stands for a frame's "<0.5 seconds>" text


@pytest.fixture(scope="module", params=["qwen3-vl", "qwen3-vl-moe"])
def model(request):
    return tiny_model(request.param)


def inputs(seed=0, t=3, gh=8, gw=8):
    """What the processor returns for 2t frames of (16 gh) x (16 gw) px: per temporal patch, a timestamp, then
    <|vision_start|>, gh gw / 4 placeholders, <|vision_end|>."""
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
        lambda mod, a, k: seen.append({key: k.get(key) for key in ("position_ids", "inputs_embeds", "visual_pos_masks",
                                                                  "deepstack_visual_embeds")}), with_kwargs=True)
    try:
        greedy(m, kw, steps)
    finally:
        hook.remove()
    return seen


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
        kept = h.pruner(h.encode_videos(**inputs(1))[0])
    K = h.last_stats[0]["tokens_kept"]
    assert K == kept.num_kept and seen[0]["inputs_embeds"].shape[1] == text + K
    # the placeholders left in frame f's run (between its <|vision_start|> and <|vision_end|>) are frame f's tokens
    mask = seen[0]["visual_pos_masks"][0]
    per_frame = torch.bincount(kept.positions[:, 0], minlength=3)
    assert int(mask.sum()) == K and per_frame.sum() == K
    runs, a = [], 2
    for f in range(3):
        a += len(STAMP) + 1
        runs.append(int(mask[a : a + int(per_frame[f])].sum()))
        a += int(per_frame[f]) + 1
    assert runs == per_frame.tolist()


def test_deepstack_levels_are_pruned_with_the_kept_rows(model):
    kw = inputs(2)
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


def test_kept_tokens_keep_their_own_positions_and_decoding_continues_at_the_stock_position(model):
    kw = inputs(3)
    stock = seen_by_llm(model, kw)
    with apply(model, "tango", 0.25) as h:
        pruned = seen_by_llm(model, kw)
        kept = h.pruner(h.encode_videos(**inputs(3))[0])
    video = (kw["input_ids"][0] == VIDEO).nonzero().flatten()
    s_pos, p_pos = stock[0]["position_ids"][-3:, 0], pruned[0]["position_ids"][-3:, 0]
    vis = pruned[0]["visual_pos_masks"][0]
    assert torch.equal(p_pos[:, vis], s_pos[:, video[kept.index]])
    assert torch.equal(p_pos[:, -2:], s_pos[:, -2:])  # the text after the video keeps its own positions
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
    with apply(model, "tango", 0.25), pytest.raises(ValueError, match="deepstack"):
        model(input_ids=kw["input_ids"], video_tokens=[None], video_grid_thw=kw["video_grid_thw"])


def test_carry_is_exact_for_selection_and_the_member_mean_for_merges():
    from tango_prune import VideoTokens

    g = torch.Generator().manual_seed(0)
    vt = VideoTokens(torch.randn(4, 16, 8, generator=g), torch.rand(4, 16, generator=g), (4, 4, 4))
    extra = torch.randn(64, 5, generator=g)
    top = get_method("topk")(retention=0.25)(vt)
    assert torch.equal(carry(top, extra), extra[top.index])
    vz = get_method("visionzip")(retention=0.25)(vt)
    rows = carry(vz, extra)
    r = int(vz.merged.nonzero()[0])
    assert torch.allclose(rows[r], extra[vz.assignment == r].mean(0))
    with pytest.raises(ValueError, match="extra must have shape"):
        carry(top, extra[:10])
