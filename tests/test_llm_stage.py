"""apply(..., llm_stage=...): the optional stage inside the LLM, on tiny random models built from configs."""
import pytest
import torch

pytest.importorskip("transformers")

from tango_prune.models import apply  # noqa: E402
from tango_prune.models.llm_stage import PRESETS, LLMStage, resolve  # noqa: E402
from tango_prune.models.zoo import tiny_model  # noqa: E402

from .test_models_llava import batch_and_alone, greedy, prompt, video  # noqa: E402
from .test_models_qwen import greedy as qwen_greedy, inputs as qwen_inputs  # noqa: E402

FULL = LLMStage(layer=1, keep=1.0, rescale=False)
HALF = LLMStage(layer=1, keep=0.5, rescale=False)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llava-onevision")


def layer_lengths(model, fn):
    """Sequence length each decoder layer receives in the first (prefill) call."""
    seen: dict[int, int] = {}
    layers = model.model.language_model.layers

    def spy(i):
        def hook(m, a, k):
            seen.setdefault(i, (a[0] if a else k["hidden_states"]).shape[1])
        return hook

    # registered after the stage's hooks, so they see what the layer itself receives
    hooks = [layer.register_forward_pre_hook(spy(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        out = fn()
    finally:
        for h in hooks:
            h.remove()
    return [seen[i] for i in range(len(layers))], out


def test_release_rescaling_of_the_pre_llm_ratio():
    stage = PRESETS["llava-video"]
    assert [round(stage.pre_llm_retention(r, 28), 4) for r in (0.10, 0.15, 0.20)] == [0.1217, 0.1826, 0.2435]
    assert LLMStage(rescale=False).pre_llm_retention(0.1, 28) == 0.1
    assert stage.pre_llm_retention(0.9, 28) == 1.0


@pytest.mark.parametrize("spec, msg", [
    ("nosuch", "llava-video"), ({"keep": 0}, "keep must be in"), ({"layer": 0}, "layer must be an integer"),
    (3, "llm_stage must be"),
])
def test_bad_stage_specs_are_named(spec, msg):
    with pytest.raises(ValueError, match=msg):
        resolve(spec)


def test_keep_all_is_the_stock_model_through_hooks_cache_and_masks(model):
    ids, pv = prompt(), video(0)
    logits, gen = model(input_ids=ids, pixel_values_videos=pv).logits, greedy(model, input_ids=ids, pixel_values_videos=pv)
    with apply(model, "none", 1.0, llm_stage=FULL):
        assert torch.allclose(model(input_ids=ids, pixel_values_videos=pv).logits, logits, atol=1e-5)
        assert torch.equal(greedy(model, input_ids=ids, pixel_values_videos=pv), gen)


def test_later_layers_see_half_the_video_and_forward_agrees_with_generate(model):
    ids, pv = prompt(), video(1)
    n = ids.shape[1]
    n_video = int((ids == 398).sum())
    with apply(model, "none", 1.0, llm_stage=HALF) as h:
        lengths, out = layer_lengths(model, lambda: model(input_ids=ids, pixel_values_videos=pv))
        assert h.last_stats[0]["llm_tokens_after_stage"] == n_video - round(n_video / 2)
        gen = greedy(model, input_ids=ids, pixel_values_videos=pv)
    assert lengths == [n, n - round(n_video / 2)]
    assert out.logits.shape[:2] == ids.shape
    assert gen[0, n] == out.logits[0, -1].argmax()  # the first generated token is the forward's prediction
    with apply(model, "none", 1.0):
        assert not torch.equal(model(input_ids=ids, pixel_values_videos=pv).logits[0, -1], out.logits[0, -1])


def test_remove_takes_the_hooks_away(model):
    ids, pv = prompt(), video(2)
    stock = model(input_ids=ids, pixel_values_videos=pv).logits
    h = apply(model, "tango", 0.5, llm_stage=HALF)
    h.remove()
    assert all(not layer._forward_pre_hooks and not layer._forward_hooks for layer in model.model.language_model.layers)
    assert torch.equal(model(input_ids=ids, pixel_values_videos=pv).logits, stock)


def test_stage_below_the_model_depth_and_rescaled_retention(model):
    with pytest.raises(ValueError, match="below the model's 2 decoder layers"):
        apply(model, "tango", 0.1, llm_stage="llava-video")
    assert "forward" not in model.__dict__
    with apply(model, "tango", 0.1, llm_stage={"layer": 1, "keep": 0.5}) as h:
        assert h.target_retention == 0.1 and h.retention == pytest.approx(2 * 0.1 / (1 + 0.5))


def test_tango_on_real_grids_takes_the_stage(model):
    """On LLaVA-OV's and LLaVA-Video's own grids the adapter builds Tango with the grid's sink preset; the stage's
    option is the handle's and must not reach the method (it did: "unknown tango options ['llm_stage']")."""
    with apply(model, "tango", 0.1, llm_stage={"layer": 1, "keep": 0.5}) as h:
        for grid in ((14, 14), (13, 13)):
            assert h._pruner_for(grid).config.retention == pytest.approx(h.retention)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_batch_of_two_videos_matches_each_alone(model, attn):
    model.config._attn_implementation = attn
    model.model.language_model.config._attn_implementation = attn
    try:
        a, b = video(4), video(5, n_frames=2)
        pa, pb = prompt(), prompt(n_frames=2, pre=(7,), post=(4, 5, 6))
        with apply(model, "tango", 0.5, llm_stage=HALF):
            both, solo = batch_and_alone(model, (pa, a), (pb, b))
    finally:
        model.config._attn_implementation = "sdpa"
        model.model.language_model.config._attn_implementation = "sdpa"
    assert torch.equal(both[0], solo[0][0]) and torch.equal(both[1], solo[1][0])


def test_qwen_keeps_its_3d_positions_through_the_stage():
    m = tiny_model("qwen2.5-vl")
    kw = qwen_inputs(3, t=2)
    stock = qwen_greedy(m, kw)
    with apply(m, "none", 1.0, llm_stage=FULL):
        assert torch.equal(qwen_greedy(m, kw), stock)
    seen: list = []
    with apply(m, "tango", 0.5, llm_stage=HALF) as h:
        hooks = [layer.register_forward_pre_hook(lambda mod, a, k: seen.append(k["position_embeddings"][0][0].clone()),
                                                 with_kwargs=True) for layer in m.model.language_model.layers]
        try:
            lengths, out = layer_lengths(m, lambda: m(**kw))
        finally:
            for hook in hooks:
                hook.remove()
        gen = qwen_greedy(m, kw)
    n = kw["input_ids"].shape[1]
    assert lengths[1] < lengths[0] and out.logits.shape[1] == n
    # Qwen's layers get their (t, h, w) positions as rotary cos rows: the later layer's must be the earlier's rows,
    # in order, some left out (each kept token keeps its own position)
    before, after = ([tuple(row) for row in cos.tolist()] for cos in seen[:2])
    assert len(after) == lengths[1] and after[-3:] == before[-3:]  # the text after the video keeps its own
    it = iter(before)
    assert all(row in it for row in after)
    assert gen[0, n] == out.logits[0, -1].argmax() and h.last_stats[0]["llm_tokens_after_stage"] > 0
