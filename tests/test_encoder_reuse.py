"""The encoder stage (encoders/reuse.py): exact where the input repeats, the partial blocks equal to the stock block
on the same composite frame, apply(..., encoder=...) on a tiny LLaVA-OneVision (computing everything = Tango alone,
shapes, remove, a batch = each video alone), and the schedule's invariants."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("transformers")

from tango_prune.encoders import reuse  # noqa: E402
from tango_prune.models import apply  # noqa: E402
from tango_prune.models.zoo import tiny_model  # noqa: E402

VIDEO = 398  # tango_prune.models.zoo.TINY_IDS
L = 16  # 112 px / 14 -> 8x8 patches -> 4x4 pooled tokens per frame


@pytest.fixture(scope="module")
def model():
    return tiny_model("llava-onevision")


def tower(model):
    t = model.model.vision_tower
    return getattr(t, "vision_model", t)  # the handle's own rule: transformers 5 has no vision_model level


def prompt(frames):
    return torch.tensor([[1, 2, 3] + [VIDEO] * (frames * L + 1) + [4, 5]])


def clip(seed, frames=4):
    return torch.randn(1, frames, 3, 112, 112, generator=torch.Generator().manual_seed(seed))


def stock_states(model, pixels):
    with torch.no_grad():
        return model.model.vision_tower(pixels, output_hidden_states=True).hidden_states


def test_repeated_frames_give_the_stock_states_bit_for_bit(model):
    frames = clip(0)[0, :1].expand(5, -1, -1, -1).contiguous()
    out, computed = reuse.encode(tower(model), frames, reuse.ReuseConfig())
    stock = stock_states(model, frames)
    assert len(out) == len(stock)
    assert all(torch.equal(a, b) for a, b in zip(out, stock))
    assert computed[0].all() and not computed[1:].any()  # frames 1-4 ran nothing after the gate


def test_tau_one_computes_everything_and_is_stock(model):
    frames = clip(1)[0]
    out, computed = reuse.encode(tower(model), frames, reuse.ReuseConfig(tau=1.0))
    assert computed.all()
    assert all(torch.equal(a, b) for a, b in zip(out, stock_states(model, frames)))


def test_partial_rows_equal_the_stock_block_on_the_composite_frame(model):
    """A frame that differs from its key frame in one corner: the computed rows must be what the stock blocks give
    when every reused row holds the key frame's state at each layer (the stage's definition)."""
    tw = tower(model)
    key = clip(2)[0, 0]
    moved = key.clone()
    moved[:, :40, :40] = torch.randn(3, 40, 40, generator=torch.Generator().manual_seed(3))
    frames = torch.stack([key, moved])
    cfg = reuse.ReuseConfig(tau=0.999, gate_layer=1, key_share=0.9, halo=0)  # the tiny 8 x 8 grid: a halo would cover it
    out, computed = reuse.encode(tw, frames, cfg)
    rows = computed[1]
    assert 0 < rows.sum() < rows.numel()  # a partial frame, not a key frame
    stock = stock_states(model, frames)
    blocks = reuse._blocks(tw)
    with torch.no_grad():
        x = stock[cfg.gate_layer][1].clone()
        for i, block in enumerate(blocks[cfg.gate_layer:], start=cfg.gate_layer):
            composite = stock[i][0].clone()  # the key frame's state at this layer ...
            composite[rows] = x[rows]  # ... with this frame's computed rows
            x = block(composite[None], None)[0]
            torch.testing.assert_close(out[i + 1][1][rows], x[rows], rtol=1e-5, atol=1e-5)
            assert torch.equal(out[i + 1][1][~rows], stock[i + 1][0][~rows])  # reused rows: the key frame's


def test_stage_computing_everything_is_tango_alone_and_on_prunes_with_its_stats_then_removes(model):
    ids, pv = prompt(4), clip(4)
    with torch.no_grad():
        ref = model(input_ids=ids, pixel_values_videos=pv).logits
        with apply(model, "tango", 0.25) as h:
            base = h.model(input_ids=ids, pixel_values_videos=pv).logits
        # tau = 1: every token runs every block, through the stage's own path (one video at a time, saliency
        # recomputed from its states instead of the tower's q/k hook): the answer must be Tango's without the stage
        with apply(model, "tango", 0.25, encoder="reuse:tau=1") as h:
            assert torch.equal(model(input_ids=ids, pixel_values_videos=pv).logits, base)
            assert h.last_stats[0]["encoder_computed"] == 1.0
        same = pv[:, :1].expand(-1, 4, -1, -1, -1).contiguous()
        full = model(input_ids=ids, pixel_values_videos=same).logits
        with apply(model, "none", 1.0, encoder="reuse") as h:
            assert torch.equal(model(input_ids=ids, pixel_values_videos=same).logits, full)
            assert h.last_stats[0]["encoder_computed"] == 0.25  # the key frame only
        with apply(model, "tango", 0.25, encoder={"tau": 0.5}) as h:
            out = model.generate(input_ids=ids, pixel_values_videos=pv, max_new_tokens=3, do_sample=False)
            assert out.shape == (1, ids.shape[1] + 3)
            assert 0 < h.last_stats[0]["encoder_computed"] <= 1
            assert h.last_stats[0]["tokens_kept"] < 4 * L
        assert torch.equal(model(input_ids=ids, pixel_values_videos=pv).logits, ref)  # removed: stock again


def test_a_batch_of_videos_answers_as_each_video_alone(model):
    """The stage refers each frame to a key frame of its own video: a batch must not chain them."""
    vids = [clip(5), clip(6)[:, :1].expand(-1, 4, -1, -1, -1).contiguous(), clip(7)]
    ids = prompt(4)
    with torch.no_grad(), apply(model, "tango", 0.25, encoder="reuse:tau=0.6") as h:
        alone = [model(input_ids=ids, pixel_values_videos=v).logits for v in vids]
        shares = [h.model(input_ids=ids, pixel_values_videos=v) and h.last_stats[0]["encoder_computed"] for v in vids]
        batch = model(input_ids=ids.expand(3, -1), pixel_values_videos=torch.cat(vids)).logits
        assert [s["encoder_computed"] for s in h.last_stats] == shares
    for b, a in enumerate(alone):
        torch.testing.assert_close(batch[b : b + 1], a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spec,match", [("warp", "encoder must be"), ("reuse:tau=2", "tau"), ("reuse:depth=1", "options"),
                                        ({"gate_layer": -1}, "gate_layer"), ("reuse:tau=x", "number"),
                                        ({"key_share": 1.5}, "key_share"), (3, "encoder must be"),
                                        ("reuse:halo=-1", "halo"), ({"halo": 0.5}, "halo")])
def test_bad_encoder_options_name_the_argument(model, spec, match):
    with pytest.raises(ValueError, match=match):
        apply(model, "tango", 0.1, encoder=spec)
    assert "forward" not in model.__dict__  # nothing left half-applied


def test_a_given_pattern_must_fit_the_video(model):
    frames = clip(8)[0]
    with pytest.raises(ValueError, match="computed must be"):
        reuse.encode(tower(model), frames, reuse.ReuseConfig(), computed=torch.ones(3, 64, dtype=torch.bool))
    pattern = torch.zeros(4, 64, dtype=torch.bool)
    pattern[2, :10] = True
    _, computed = reuse.encode(tower(model), frames, reuse.ReuseConfig(), computed=pattern)
    assert computed[0].all() and computed[2].sum() == 10 and not computed[[1, 3]].any()


def dilated(change, halo, side):
    """Reference for the halo: a patch runs when any changed patch lies within ``halo`` rows and columns (loops)."""
    c = change.view(side, side)
    return torch.tensor([[bool(c[max(0, i - halo):i + halo + 1, max(0, j - halo):j + halo + 1].any())
                          for j in range(side)] for i in range(side)]).flatten()


@settings(max_examples=40, deadline=None)
@given(T=st.integers(1, 6), side=st.integers(1, 4), tau=st.floats(-0.5, 1.0), share=st.floats(0.0, 1.0),
       prefix=st.integers(0, 1), halo=st.integers(0, 2), seed=st.integers(0, 10_000))
def test_schedule_invariants(T, side, tau, share, prefix, halo, seed):
    N = prefix + side * side
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, N, 4, generator=g)
    gate = base + 0.7 * torch.randn(T, N, 4, generator=g) * (torch.rand(T, N, 1, generator=g) < 0.4)
    ref, computed = reuse.schedule(gate, tau, prefix, share, halo)
    keys = ref == torch.arange(T)
    assert keys[0] and bool((ref <= torch.arange(T)).all()) and bool(keys[ref].all())  # refs are earlier key frames
    assert computed[keys].all()
    for t in (~keys).nonzero().flatten().tolist():
        sim = torch.nn.functional.cosine_similarity(gate[t], gate[ref[t]], dim=-1)
        patches = computed[t, prefix:]
        assert torch.equal(patches, dilated(sim[prefix:] < tau, halo, side))  # exactly the changed patches (+ halo) run
        assert patches.float().mean() <= share + 1e-6
        if prefix:
            assert bool(computed[t, 0]) == bool(patches.any())  # CLS runs when anything changed


def test_the_halo_decides_alike_in_any_row_order():
    """Qwen's towers hold a temporal patch's rows in merge-group / window order: given each row's raster index, the
    halo marks the same patches as on the raster grid."""
    g = torch.Generator().manual_seed(3)
    gate = torch.randn(1, 48, 8, generator=g).repeat(5, 1, 1)
    gate[1:, [5, 27, 47]] += 3 * torch.randn(4, 3, 8, generator=g)  # a few patches change, one at the corner
    rows = torch.randperm(48, generator=g)  # row i holds raster patch rows[i]
    ref, raster = reuse.schedule(gate, 0.9, 0, 0.9, 1, (6, 8))
    ref2, held = reuse.schedule(gate[:, rows], 0.9, 0, 0.9, 1, (6, 8), rows)
    assert torch.equal(ref, ref2) and torch.equal(held, raster[:, rows])
    assert int(raster[1].sum()) == 4 + 6 + 9  # corner 47: 2 x 2; 5 (top edge): 2 x 3; 27 (inside): 3 x 3
    with pytest.raises(ValueError, match="halo"):
        reuse.schedule(torch.randn(2, 5, 4), 0.9, 0, 0.5, 1)  # 5 patches: no square grid to spread on


def test_halo_zero_is_the_token_alone_and_a_halo_computes_more_and_stays_exact_on_repeats(model):
    frames = clip(9)[0]
    frames[1:, :, :28, :28] = frames[0, :, :28, :28]  # one corner of the frames repeats
    _, alone = reuse.encode(tower(model), frames, reuse.ReuseConfig(tau=0.9, key_share=1.0, halo=0))
    _, wide = reuse.encode(tower(model), frames, reuse.ReuseConfig(tau=0.9, key_share=1.0, halo=1))
    side = 8
    for t in range(1, 4):
        assert torch.equal(wide[t], dilated(alone[t], 1, side))
    hs, computed = reuse.encode(tower(model), frames[:1].repeat(4, 1, 1, 1), reuse.ReuseConfig(halo=2))
    assert not computed[1:].any()
    for got, want in zip(hs, stock_states(model, frames[:1].repeat(4, 1, 1, 1)[None][0])):
        assert torch.equal(got, want)
