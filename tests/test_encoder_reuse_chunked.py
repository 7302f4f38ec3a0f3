"""The encoder stage with ``chunk_frames`` (long videos in bounded memory) through apply(), on tiny LLaVA-OneVision,
Qwen2.5-VL, Qwen3-VL and Qwen3.5: each chunk is its own stage call, so its first frame (temporal patch) is a key and
only one chunk's states are ever held. A video whose frames repeat within each chunk but differ across chunks, at a
schedule that would reuse almost everything across them (tau 0, no key promotion), answers exactly as the chunked
stock tower does; a stage over the whole video would hand the second chunk the first one's states. A video's
computed share is its chunks' weighted by their frames."""
import pytest
import torch

pytest.importorskip("transformers")

from tango_prune.models import apply  # noqa: E402

from . import test_encoder_reuse as llava  # noqa: E402
from . import test_encoder_reuse_qwen as qwen  # noqa: E402

# everything a non-key frame has is reused unless it points the opposite way; no frame is promoted to a key; the gate
# before the first block (the tiny towers have 2-3)
GREEDY = {"tau": 0.0, "key_share": 1.0, "halo": 0, "gate_layer": 0}


def llava_blocks(pieces):
    """A 4-frame LLaVA-OV video: frame i is clip(pieces[i])'s frame 0."""
    return torch.cat([llava.clip(p)[:, :1] for p in pieces], dim=1)


def test_llava_chunks_start_at_a_key_frame():
    model = llava.tiny_model("llava-onevision")
    ids, pv = llava.prompt(4), llava_blocks([10, 10, 11, 11])
    with torch.no_grad():
        with apply(model, "tango", 0.25, chunk_frames=2) as h:
            stock = h.model(input_ids=ids, pixel_values_videos=pv).logits
        with apply(model, "tango", 0.25, chunk_frames=2, encoder=GREEDY) as h:
            got = h.model(input_ids=ids, pixel_values_videos=pv).logits
            assert h.last_stats[0]["encoder_computed"] == 0.5  # each chunk: its key frame only
        with apply(model, "tango", 0.25, encoder=GREEDY) as h:  # the whole video one stage call: frames 2-3 reuse 0's
            whole = h.model(input_ids=ids, pixel_values_videos=pv).logits
            # frames 2-3 refer to frame 0 and reuse some of its rows (each a key on its own: 0.75)
            assert h.last_stats[0]["encoder_computed"] < 0.75
    assert torch.equal(got, stock)
    assert not torch.equal(whole, stock)  # the premise: chaining across the chunks would show


def test_llava_share_is_weighted_by_chunk_frames():
    model = llava.tiny_model("llava-onevision")
    ids, pv = llava.prompt(4), llava_blocks([12, 12, 12, 13])
    with torch.no_grad(), apply(model, "tango", 0.25, chunk_frames=3, encoder=GREEDY) as h:
        h.model(input_ids=ids, pixel_values_videos=pv)
        # chunks [A A A] (1 of 3 frames computed) and [B] (its key): (1/3 * 3 + 1 * 1) / 4
        assert h.last_stats[0]["encoder_computed"] == pytest.approx(0.5)


def qwen_blocks(family, pieces):
    """A 4-temporal-patch Qwen video: patch i is patch 0 of inputs(family, pieces[i])."""
    kw = qwen.inputs(family, 0, t=4)
    rows = kw["pixel_values_videos"].shape[0] // 4
    pv = torch.cat([qwen.inputs(family, p, t=4)["pixel_values_videos"][:rows] for p in pieces])
    return dict(kw, pixel_values_videos=pv)


@pytest.mark.parametrize("family", qwen.FAMILIES)
def test_qwen_chunks_start_at_a_key_patch(family):
    model = qwen.model_of(family)
    kw = qwen_blocks(family, [20, 20, 21, 21])
    with torch.no_grad():
        with apply(model, "tango", 0.25, chunk_frames=2) as h:
            stock = h.model(**kw).logits
        with apply(model, "tango", 0.25, chunk_frames=2, encoder=GREEDY) as h:
            got = h.model(**kw).logits
            assert h.last_stats[0]["encoder_computed"] == pytest.approx(0.5)
        with apply(model, "tango", 0.25, encoder=GREEDY) as h:
            whole = h.model(**kw).logits
            assert h.last_stats[0]["encoder_computed"] < 0.75
    assert torch.equal(got, stock)
    assert not torch.equal(whole, stock)
