"""apply(..., positions="original") on a tiny LLaVA-OneVision: kept and text tokens keep their full-sequence 1-D
positions in prefill, decoding continues after the full sequence, and nothing changes when nothing is pruned."""
import pytest
import torch

pytest.importorskip("transformers")

from tango_prune.models import apply  # noqa: E402
from tango_prune.models.zoo import tiny_model  # noqa: E402

VIDEO, PAD = 398, 0
T, L = 4, 16
PRE, POST = (1, 2, 3), (4, 5)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llava-onevision")


def prompt():
    return torch.tensor([[*PRE] + [VIDEO] * (T * L + 1) + [*POST]])


def video(seed):
    return torch.randn(1, T, 3, 112, 112, generator=torch.Generator().manual_seed(seed))


def spy_positions(model):
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw.get("position_ids")), with_kwargs=True)
    return seen, hook


def test_nothing_pruned_is_the_stock_model(model):
    ids, pv = prompt(), video(0)
    logits = model(input_ids=ids, pixel_values_videos=pv).logits
    gen = model.generate(input_ids=ids, pixel_values_videos=pv, max_new_tokens=5, do_sample=False)
    with apply(model, "tango", 1.0, positions="original"):
        assert torch.allclose(model(input_ids=ids, pixel_values_videos=pv).logits, logits, atol=1e-5)
        assert torch.equal(model.generate(input_ids=ids, pixel_values_videos=pv, max_new_tokens=5, do_sample=False), gen)


@pytest.mark.parametrize("method", ["tango", "random", "uniform"])
def test_prefill_positions_are_the_kept_tokens_own(model, method):
    ids, pv = prompt(), video(1)
    seen, hook = spy_positions(model)
    try:
        with apply(model, method, 0.25, positions="original") as h:
            model(input_ids=ids, pixel_values_videos=pv)
            kept = h.pruner(h.encode_videos(input_ids=ids, pixel_values_videos=pv)[0]).index
    finally:
        hook.remove()
    n = len(PRE)
    want = torch.cat([torch.arange(n), n + kept, torch.tensor([n + T * L]), n + T * L + 1 + torch.arange(len(POST))])
    assert len(kept) < T * L
    assert torch.equal(seen[0][0], want)


def test_decoding_continues_after_the_full_sequence(model):
    ids, pv = prompt(), video(2)
    seen, hook = spy_positions(model)
    try:
        with apply(model, "tango", 0.25, positions="original"):
            out = model.generate(input_ids=ids, pixel_values_videos=pv, max_new_tokens=3, do_sample=False)
    finally:
        hook.remove()
    assert out.shape[1] == ids.shape[1] + 3
    assert [int(p[0, -1]) for p in seen] == [ids.shape[1] - 1, ids.shape[1], ids.shape[1] + 1]


def test_left_padded_batch_matches_each_alone(model):
    a, b = prompt(), torch.tensor([[7] + [VIDEO] * (T * L + 1) + [*POST]])
    pa, pb = video(3), video(4)
    ids = torch.cat([a, torch.cat([torch.full((1, 2), PAD), b], 1)])
    mask = torch.cat([torch.ones_like(a), torch.cat([torch.zeros(1, 2, dtype=torch.long), torch.ones_like(b)], 1)])
    with apply(model, "tango", 0.25, positions="original"):
        both = model.generate(input_ids=ids, attention_mask=mask, pixel_values_videos=torch.cat([pa, pb]),
                              max_new_tokens=4, do_sample=False)
        alone = [model.generate(input_ids=x, pixel_values_videos=p, max_new_tokens=4, do_sample=False)
                 for x, p in ((a, pa), (b, pb))]
    assert torch.equal(both[0, -4:], alone[0][0, -4:]) and torch.equal(both[1, -4:], alone[1][0, -4:])


def test_bad_positions_are_named(model):
    with pytest.raises(ValueError, match="positions must be 'compact'"):
        apply(model, "tango", 0.25, positions="shifted")
    qwen = tiny_model("qwen2.5-vl")
    with pytest.raises(ValueError, match="M-RoPE"):
        apply(qwen, "tango", 0.25, positions="compact")


def test_the_stage_inside_the_llm_carries_original_positions(model):
    """positions="original" with llm_stage: a stage that keeps everything changes nothing, and the layers after a
    halving stage receive the kept tokens' own original positions."""
    from tango_prune.models.llm_stage import LLMStage

    ids, pv = prompt(), video(5)
    with apply(model, "tango", 0.5, positions="original") as h:
        ref = model(input_ids=ids, pixel_values_videos=pv).logits[0, -1]
        gen = model.generate(input_ids=ids, pixel_values_videos=pv, max_new_tokens=3, do_sample=False)
    with apply(model, "tango", 0.5, positions="original", llm_stage=LLMStage(layer=1, keep=1.0, rescale=False)):
        assert torch.allclose(model(input_ids=ids, pixel_values_videos=pv).logits[0, -1], ref, atol=1e-5)
        assert torch.equal(model.generate(input_ids=ids, pixel_values_videos=pv, max_new_tokens=3, do_sample=False), gen)
    seen = []
    with apply(model, "tango", 0.5, positions="original", llm_stage=LLMStage(layer=1, keep=0.5, rescale=False)) as h:
        # registered after the stage's own hooks: sees what layer 1 itself receives
        hook = model.model.language_model.layers[1].register_forward_pre_hook(
            lambda m, a, kw: seen.append(kw.get("position_ids")), with_kwargs=True)
        try:
            model(input_ids=ids, pixel_values_videos=pv)
        finally:
            hook.remove()
        before_stage = len(PRE) + h.last_stats[0]["llm_tokens"] + len(POST)
    pos = seen[0][0]
    assert pos[-1] == ids.shape[1] - 1 and bool((pos[1:] > pos[:-1]).all())  # a subsequence of the full numbering
    assert len(pos) < before_stage
