"""The encoder stage in Qwen's towers (encoders/reuse_qwen.py) on tiny random Qwen2.5-VL (window attention), Qwen3-VL
(deepstack taps) and Qwen3.5: exact where the temporal patches repeat, the stock forward at tau 1, the computed rows
equal to the stock blocks on the composite temporal patch (window and full layers), and through apply(): Tango alone
at tau 1, a batch = each video alone, bad options one line."""
import pytest
import torch

pytest.importorskip("transformers")

from tango_prune.encoders.reuse import ReuseConfig  # noqa: E402
from tango_prune.encoders.reuse_qwen import reuse_blocks  # noqa: E402
from tango_prune.models import apply  # noqa: E402

from . import test_models_qwen as q25  # noqa: E402
from . import test_models_qwen3 as q3  # noqa: E402

FAMILIES = ["qwen2.5-vl", "qwen3-vl", "qwen3.5"]
GATE0 = ReuseConfig(gate_layer=0)  # the tiny towers have 2-3 blocks: gate before the first, so every block is staged


def model_of(family):
    return q3._model(family) if family != "qwen2.5-vl" else q3._built.setdefault(family, q25.tiny_model(family))


def inputs(family, seed=0, t=4):
    return q25.inputs(seed, t=t) if family == "qwen2.5-vl" else q3.inputs(seed, t=t)


def tower_out(model, kw, cfg=None, computed=None):
    visual = model.model.visual
    pv, thw = kw["pixel_values_videos"], kw["video_grid_thw"]
    with torch.no_grad():
        if cfg is None:
            out, plan = visual(pv, grid_thw=thw), None
        else:
            with reuse_blocks(visual, cfg, tuple(thw[0].tolist()), computed) as plan:
                out = visual(pv, grid_thw=thw)
    deep = list(getattr(out, "deepstack_features", None) or [])
    return [out.last_hidden_state, out.pooler_output, *deep], plan


def repeated(kw, t):
    rows = kw["pixel_values_videos"].shape[0] // t
    return dict(kw, pixel_values_videos=kw["pixel_values_videos"][:rows].repeat(t, 1))


@pytest.mark.parametrize("family", FAMILIES)
def test_repeated_temporal_patches_give_the_stock_tower_bit_for_bit(family):
    model = model_of(family)
    kw = repeated(inputs(family, 1), 4)
    stock, _ = tower_out(model, kw)
    got, plan = tower_out(model, kw, GATE0)
    assert all(torch.equal(a, b) for a, b in zip(got, stock)) and len(got) == len(stock)
    assert plan.computed[0].all() and not plan.computed[1:].any()  # one key patch; the others ran nothing


@pytest.mark.parametrize("family", FAMILIES)
def test_tau_one_is_the_stock_tower(family):
    model = model_of(family)
    kw = inputs(family, 2)
    got, plan = tower_out(model, kw, ReuseConfig(tau=1.0, gate_layer=0))
    assert plan.computed.all()
    assert all(torch.equal(a, b) for a, b in zip(got, tower_out(model, kw)[0]))


@pytest.mark.parametrize("family", FAMILIES)
def test_computed_rows_equal_the_stock_blocks_on_the_composite_temporal_patch(family):
    """Two temporal patches, the second the first with a few patch rows changed: at every layer after the gate its
    computed rows are what the stock block gives when its reused rows hold the key's state (the stage's definition),
    under each layer's own segments (Qwen2.5-VL: a window layer, then a full one)."""
    model = model_of(family)
    visual = model.model.visual
    kw = repeated(inputs(family, 3, t=2), 2)
    pv = kw["pixel_values_videos"].clone()
    n = pv.shape[0] // 2
    pv[n : n + 6] = torch.randn(6, pv.shape[1], generator=torch.Generator().manual_seed(4))  # a corner moves
    kw = dict(kw, pixel_values_videos=pv)
    calls = []  # the stock forward's per-block arguments (segments, rotary) and inputs
    hooks = [b.register_forward_pre_hook(lambda m, a, k: calls.append((a[0] if a else k["hidden_states"], k)),
                                         with_kwargs=True) for b in visual.blocks]
    try:
        stock, _ = tower_out(model, kw)
    finally:
        for h in hooks:
            h.remove()
    cfg = ReuseConfig(tau=0.9999, gate_layer=0, key_share=0.9)
    got, plan = tower_out(model, kw, cfg)
    rows = plan.computed[1]
    assert 0 < rows.sum() < rows.numel()  # a partial temporal patch
    with torch.no_grad():
        x = calls[0][0].clone()
        for i, block in enumerate(visual.blocks):
            comp = calls[i][0].clone()  # the key's rows at this layer are stock (it runs the stock block) ...
            comp[n:][~rows] = comp[:n][~rows]  # ... a reused row holds the key's state
            comp[n:][rows] = x[n:][rows]  # ... a computed row its own
            x = block(comp, **{k: v for k, v in calls[i][1].items() if k != "hidden_states"})
    torch.testing.assert_close(got[0][n:][rows], x[n:][rows], rtol=1e-5, atol=1e-5)
    assert torch.equal(got[0][n:][~rows], stock[0][:n][~rows])  # reused rows: the key's final state
    assert torch.equal(got[0][:n], stock[0][:n])  # the key patch: stock


@pytest.mark.parametrize("family", FAMILIES)
def test_apply_with_the_stage(family):
    """tau 1 through apply() is Tango alone; repeated temporal patches with method none are the stock answer and
    compute one patch in four; a batch of two videos answers as each alone; removed, the model is stock."""
    model = model_of(family)
    kw = inputs(family, 5)
    with torch.no_grad():
        ref = model(**kw).logits
        with apply(model, "tango", 0.25) as h:
            base = model(**kw).logits
        with apply(model, "tango", 0.25, encoder={"tau": 1.0, "gate_layer": 0}) as h:
            assert torch.equal(model(**kw).logits, base)
            assert h.last_stats[0]["encoder_computed"] == 1.0
        same = repeated(kw, 4)
        full = model(**same).logits
        with apply(model, "none", 1.0, encoder={"gate_layer": 0}) as h:
            assert torch.equal(model(**same).logits, full)
            assert h.last_stats[0]["encoder_computed"] == 0.25
        assert torch.equal(model(**kw).logits, ref)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_batch_of_videos_answers_as_each_video_alone(family):
    model = model_of(family)
    vids = [inputs(family, 6), repeated(inputs(family, 7), 4)]
    with torch.no_grad(), apply(model, "tango", 0.25, encoder={"tau": 0.3, "gate_layer": 0}) as h:
        alone = []
        for v in vids:
            alone.append((model(**v).logits, h.last_stats[0]["encoder_computed"]))
        batch = {k: torch.cat([v[k] for v in vids]) for k in ("input_ids", "pixel_values_videos", "video_grid_thw")}
        if "mm_token_type_ids" in vids[0]:
            batch["mm_token_type_ids"] = torch.cat([v["mm_token_type_ids"] for v in vids])
        if "second_per_grid_ts" in vids[0]:
            batch["second_per_grid_ts"] = torch.cat([v["second_per_grid_ts"] for v in vids])
        logits = model(**batch).logits
        assert [s["encoder_computed"] for s in h.last_stats] == [a[1] for a in alone]
    assert alone[1][1] == 0.25 and alone[0][1] > 0.25
    for b, (a, _) in enumerate(alone):
        torch.testing.assert_close(logits[b : b + 1], a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spec,match", [("reuse:tau=2", "tau"), ({"gate_layer": -1}, "gate_layer"), ("warp", "encoder must be")])
def test_bad_options_are_one_line_errors(spec, match):
    model = model_of("qwen2.5-vl")
    with pytest.raises(ValueError, match=match) as info:
        apply(model, "tango", 0.1, encoder=spec)
    assert "\n" not in str(info.value) and "forward" not in model.__dict__


@pytest.mark.parametrize("family", FAMILIES)
def test_the_halo_spreads_on_the_image_grid(family):
    """One patch of temporal patch 1 changed (at its row in the processor's merge-group order): halo 1 computes its
    3 x 3 square on the image, read back through the tower's row order (Qwen2.5-VL's windows)."""
    from tango_prune.encoders.reuse_qwen import tower_rows

    model = model_of(family)
    visual = model.model.visual
    kw = repeated(inputs(family, 5, t=2), 2)
    _, h, w = kw["video_grid_thw"][0].tolist()
    m = visual.spatial_merge_size
    proc = torch.arange(h * w).view(h // m, m, w // m, m).permute(0, 2, 1, 3).flatten()
    r, c = h // 2, w // 2
    pv = kw["pixel_values_videos"].clone()
    at = h * w + int((proc == r * w + c).nonzero())
    pv[at] = 100 * torch.randn(pv.shape[1], generator=torch.Generator().manual_seed(6))
    # tiny towers' patch embeddings hardly move with their input: a row 100 times larger and tau just below 1
    _, plan = tower_out(model, dict(kw, pixel_values_videos=pv), ReuseConfig(tau=0.9999, gate_layer=0, halo=1, key_share=1.0))
    raster = torch.zeros(h * w, dtype=torch.bool)
    raster[tower_rows(visual, h, w)] = plan.computed[1]
    want = torch.zeros(h, w, dtype=torch.bool)
    want[r - 1:r + 2, c - 1:c + 2] = True
    assert torch.equal(raster, want.flatten())
