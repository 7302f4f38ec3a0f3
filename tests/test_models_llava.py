"""apply() on a tiny random LLaVA-OneVision built from configs: what a user of generate() and forward() relies on."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from tango_prune.models import apply  # noqa: E402
from tango_prune.models.zoo import load_model, tiny_model  # noqa: E402
from tango_prune.models.sequence import compact_video_runs, expand_to_original  # noqa: E402

VIDEO, PAD = 398, 0  # tango_prune.models.zoo.TINY_IDS
T, SIDE = 4, 8  # 112 px / 14 -> 8x8 patches -> 4x4 pooled tokens per frame
L = 16


@pytest.fixture(scope="module")
def model():
    return tiny_model("llava-onevision")


def prompt(n_frames=T, pre=(1, 2, 3), post=(4, 5)):
    return torch.tensor([[*pre] + [VIDEO] * (n_frames * L + 1) + [*post]])


def video(seed, n_frames=T):
    return torch.randn(1, n_frames, 3, 112, 112, generator=torch.Generator().manual_seed(seed))


def greedy(m, **kw):
    return m.generate(**kw, max_new_tokens=6, do_sample=False)


def test_none_and_full_retention_match_the_stock_model(model):
    ids, pv = prompt(), video(0)
    logits, gen = model(input_ids=ids, pixel_values_videos=pv).logits, greedy(model, input_ids=ids, pixel_values_videos=pv)
    for method, r in (("none", 1.0), ("tango", 1.0)):
        with apply(model, method, r):
            assert torch.equal(model(input_ids=ids, pixel_values_videos=pv).logits, logits)
            assert torch.equal(greedy(model, input_ids=ids, pixel_values_videos=pv), gen)


def test_tango_feeds_the_llm_exactly_the_kept_tokens_plus_newline(model):
    ids, pv = prompt(), video(1)
    seen = {}

    def spy(module, args, kwargs):
        seen["len"] = kwargs["inputs_embeds"].shape[1]

    hook = model.model.language_model.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        with apply(model, "tango", 0.25) as h:
            out = model(input_ids=ids, pixel_values_videos=pv)
            kept = h.last_stats[0]["tokens_kept"]
    finally:
        hook.remove()
    assert seen["len"] == 3 + kept + 1 + 2
    assert kept < T * L and h.last_stats[0]["llm_tokens"] == kept + 1
    assert out.logits.shape[:2] == ids.shape  # logits come back aligned with the caller's input_ids


def test_generate_keeps_the_prompt_prefix_contract(model):
    ids, pv = prompt(), video(2)
    with apply(model, "tango", 0.1):
        out = greedy(model, input_ids=ids, pixel_values_videos=pv)
    assert torch.equal(out[:, : ids.shape[1]], ids) and out.shape[1] == ids.shape[1] + 6


def test_text_only_and_remove_restore_stock_behaviour(model):
    ids = torch.tensor([[1, 2, 3, 4]])
    stock_text = model(input_ids=ids).logits
    vid, pv = prompt(), video(3)
    stock_video = greedy(model, input_ids=vid, pixel_values_videos=pv)
    h = apply(model, "tango", 0.1)
    assert torch.equal(model(input_ids=ids).logits, stock_text)
    assert not torch.equal(model(input_ids=vid, pixel_values_videos=pv).logits[:, -1], torch.zeros(1))
    h.remove()
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__
    assert torch.equal(greedy(model, input_ids=vid, pixel_values_videos=pv), stock_video)


def test_apply_twice_is_refused_and_unsupported_models_named(model):
    with apply(model, "tango", 0.1):
        with pytest.raises(ValueError, match="already applied"):
            apply(model, "tango", 0.2)
    with pytest.raises(ValueError, match="LlavaOnevisionForConditionalGeneration"):
        apply(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown method"):
        apply(model, "nosuch")
    assert "forward" not in model.__dict__  # a refused apply leaves nothing behind


def batch_and_alone(model, *pairs):
    """Greedy replies to (prompt, video) pairs in one left-padded batch (as for generation) and one by one."""
    solo = [greedy(model, input_ids=p, pixel_values_videos=[v[0]])[:, p.shape[1]:] for p, v in pairs]
    S = max(p.shape[1] for p, _ in pairs)
    ids = torch.full((len(pairs), S), PAD)
    mask = torch.zeros(len(pairs), S, dtype=torch.long)
    for i, (p, _) in enumerate(pairs):
        ids[i, S - p.shape[1]:], mask[i, S - p.shape[1]:] = p[0], 1
    both = greedy(model, input_ids=ids, attention_mask=mask, pixel_values_videos=[v[0] for _, v in pairs])[:, S:]
    return both, solo


def test_batch_of_two_videos_matches_each_alone(model):
    a, b = video(4), video(5, n_frames=2)
    pa, pb = prompt(), prompt(n_frames=2, pre=(7,), post=(4, 5, 6))
    with apply(model, "tango", 0.25):
        both, solo = batch_and_alone(model, (pa, a), (pb, b))
    assert torch.equal(both[0], solo[0][0]) and torch.equal(both[1], solo[1][0])


def flash(seed, n_frames=T):
    """A still video with four bright squares in frame 1 only: brief events for TangoConfig.brief_frames (more than
    the frame's two kept tokens can hold)."""
    v = video(seed, n_frames=1).expand(1, n_frames, 3, 112, 112).clone()
    for y, x in ((0, 0), (0, 84), (84, 0), (84, 84)):
        v[0, 1, :, y : y + 28, x : x + 28] = 3.0
    return v


def test_brief_frames_adds_tokens_and_a_batch_matches_each_alone(model):
    a, b = flash(8), flash(9, n_frames=3)
    pa, pb = prompt(), prompt(n_frames=3, pre=(7,), post=(4, 5, 6))
    with apply(model, "tango", 0.1) as h:
        model(input_ids=pa, pixel_values_videos=a)
        plain = h.last_stats[0]["tokens_kept"]
    with apply(model, "tango", 0.1, brief_frames=1) as h:
        model(input_ids=pa, pixel_values_videos=a)
        assert h.last_stats[0]["tokens_kept"] > plain  # the square's tokens are kept in addition
        both, solo = batch_and_alone(model, (pa, a), (pb, b))
    assert torch.equal(both[0], solo[0][0]) and torch.equal(both[1], solo[1][0])


def test_saliency_sources_are_chosen_and_reported(model):
    ids, pv = prompt(), video(6)
    for mode, name in (("auto", "attention-received"), ("features", "feature-distinctiveness")):
        with apply(model, "tango", 0.25, saliency=mode) as h:
            model(input_ids=ids, pixel_values_videos=pv)
            assert h.last_stats[0]["saliency"] == name
    with pytest.raises(ValueError, match="siglip_head"):
        apply(model, "tango", 0.1, saliency="map-head")


def test_placeholder_mismatch_is_a_clear_error(model):
    with apply(model, "tango", 0.25):
        with pytest.raises(ValueError, match="placeholders"):
            model(input_ids=prompt(n_frames=3), pixel_values_videos=video(0))


def test_compact_and_expand_round_trip():
    ids = torch.tensor([[0, 0, 5, 9, 9, 9, 9, 6], [5, 9, 9, 9, 9, 9, 9, 6]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1]])
    c = compact_video_runs(ids, mask, 9, [4, 6], [2, 3], pad_id=0)
    assert c.input_ids.tolist() == [[0, 5, 9, 9, 6], [5, 9, 9, 9, 6]]
    assert c.attention_mask.tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    back = expand_to_original(torch.arange(10.0).view(2, 5, 1), c)[..., 0]
    # kept original positions carry their values; cut placeholders (and pads) repeat the last kept one
    assert back[0].tolist() == [1, 1, 1, 2, 3, 3, 3, 4]
    assert back[1].tolist() == [5, 6, 7, 8, 8, 8, 8, 9]


def test_map_head_saliency_from_a_local_siglip_checkpoint(model, tmp_path):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    vc = model.config.vision_config.to_dict()
    tower = SiglipVisionModel(SiglipVisionConfig(**{**vc, "vision_use_head": True}))
    tower.save_pretrained(tmp_path / "siglip")
    ids, pv = prompt(), video(7)
    with apply(model, "tango", 0.25, siglip_head=str(tmp_path / "siglip")) as h:
        model(input_ids=ids, pixel_values_videos=pv)
        assert h.last_stats[0]["saliency"] == "siglip-map-head"
    with pytest.raises(ValueError, match="local SigLIP checkpoint"):
        apply(model, "tango", 0.1, siglip_head=str(tmp_path / "nowhere"))


def test_release_sinks_only_on_the_grid_they_belong_to(model):
    with apply(model, "tango", 0.1) as h:
        assert h._pruner_for((14, 14)).config.sink_indices == "llava-ov"
        assert h._pruner_for((13, 13)).config.sink_indices == "llava-video"
        assert h._pruner_for((4, 4)) is h.pruner and h.pruner.config.sink_indices == ()
    with apply(model, "tango", 0.1, sink_indices=(1,)) as h:
        assert h._pruner_for((14, 14)).config.sink_indices == (1,)


def test_load_model_round_trip_and_errors(model, tmp_path):
    model.save_pretrained(tmp_path / "ov")
    again = load_model(tmp_path / "ov")
    ids, pv = prompt(), video(8)
    assert torch.allclose(again(input_ids=ids, pixel_values_videos=pv).logits, model(input_ids=ids, pixel_values_videos=pv).logits)
    with pytest.raises(ValueError, match="config.json"):
        load_model(tmp_path)


def test_cls_attention_saliency_for_a_tower_with_a_cls_token():
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlavaOnevisionConfig(
        vision_config=tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=2, image_size=112, patch_size=14),
        text_config=tf.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=400),
        image_token_id=397, video_token_id=VIDEO, vision_feature_layer=-1, vision_feature_select_strategy="default")
    m = tf.LlavaOnevisionForConditionalGeneration(cfg).eval()
    ids, pv = prompt(n_frames=2), video(9, n_frames=2)
    stock = m(input_ids=ids, pixel_values_videos=pv).logits
    with apply(m, "none"):
        assert torch.equal(m(input_ids=ids, pixel_values_videos=pv).logits, stock)  # CLS dropped as the class does
    with apply(m, "tango", 0.25) as h:
        m(input_ids=ids, pixel_values_videos=pv)
        assert h.last_stats[0]["saliency"] == "cls-attention" and h.last_stats[0]["tokens_full"] == 2 * L


def test_an_instance_level_forward_is_wrapped_and_restored(model):
    """accelerate's device hooks replace forward on the instance; apply must go through them and give them back."""
    calls = []
    stock = type(model).forward.__get__(model)

    def hooked(*a, **kw):
        calls.append(1)
        return stock(*a, **kw)

    model.forward = hooked
    try:
        with apply(model, "tango", 0.25):
            model(input_ids=prompt(), pixel_values_videos=video(10))
        assert calls and model.__dict__["forward"] is hooked
    finally:
        del model.forward
