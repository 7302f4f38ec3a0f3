"""apply(..., chunk_frames=N) on tiny random models of every family: the tower runs on at most N frames at a time,
each chunk is pruned as it comes (stream.TangoStream), and where the whole video's segments are its scenes the LLM
gets what it gets without chunks; a batch equals each video alone; bad options are one-line errors."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from tango_prune.models import apply  # noqa: E402
from tango_prune.models.zoo import tiny_model  # noqa: E402

from . import test_models_qwen as q25  # noqa: E402
from . import test_models_qwen3 as q3  # noqa: E402

VIDEO = 398
SCENES = [3, 4, 2]  # frames (LLaVA) or temporal patches (Qwen) per scene
_built: dict = {}


def _model(family):
    if family not in _built:
        _built[family] = q3._model(family) if family in q3.DEEPSTACK + q3.HYBRID else tiny_model(family)
    return _built[family]


def scene_rows(rows_per_frame: int, width: int, seed: int, scenes=SCENES) -> torch.Tensor:
    """Pixel rows of a video of still scenes (a little noise per frame): (sum(scenes) * rows_per_frame, width)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in scenes:
        base = torch.randn(1, rows_per_frame, width, generator=g)
        out.append(base + 0.01 * torch.randn(n, rows_per_frame, width, generator=g))
    return torch.cat(out).flatten(0, 1)


def llava_inputs(seed=0, scenes=SCENES):
    T = sum(scenes)
    pv = scene_rows(3 * 112, 112, seed, scenes).view(1, T, 3, 112, 112)
    return dict(input_ids=torch.tensor([[1, 2] + [VIDEO] * (T * 16 + 1) + [4, 5]]), pixel_values_videos=pv)


def qwen_inputs(family, seed=0, scenes=SCENES):
    t = sum(scenes)
    kw = q25.inputs(seed, t=t) if family == "qwen2.5-vl" else q3.inputs(seed, t=t)
    rows, width = kw["pixel_values_videos"].shape
    kw["pixel_values_videos"] = scene_rows(rows // t, width, seed, scenes)
    return kw


FAMILIES = ["llava-onevision", "qwen2.5-vl", "qwen3-vl", "qwen3.5"]


def inputs(family, seed=0, scenes=SCENES):
    return llava_inputs(seed, scenes) if family == "llava-onevision" else qwen_inputs(family, seed, scenes)


def tower(model):
    return model.model.vision_tower if hasattr(model.model, "vision_tower") else model.model.visual


def run(model, kw, **opts):
    """Greedy tokens, what the LLM got at prefill (embeddings, deepstack), the stats, and each tower call's size."""
    seen, calls = [], []
    lm = model.model.language_model
    h1 = lm.register_forward_pre_hook(lambda m, a, k: seen.append(
        (k["inputs_embeds"].clone(), k.get("deepstack_visual_embeds"))), with_kwargs=True)
    h2 = tower(model).register_forward_pre_hook(lambda m, a, k: calls.append((a[0] if a else k["pixel_values"]).shape[0]),
                                                with_kwargs=True)
    try:
        with apply(model, "tango", 0.25, **opts) as h:
            out = model.generate(**kw, max_new_tokens=4, do_sample=False)
            stats = h.last_stats
    finally:
        h1.remove()
        h2.remove()
    return out, seen[0], stats, calls


@pytest.mark.parametrize("family", FAMILIES)
def test_chunks_give_the_llm_what_the_whole_video_gives(family):
    model, kw = _model(family), inputs(family)
    T = sum(SCENES)
    whole, (emb, deep), stats, calls = run(model, kw)
    got, (emb_c, deep_c), stats_c, calls_c = run(model, kw, chunk_frames=2)
    rows = calls[0] // T  # pixel rows per frame (LLaVA: 1 image per frame; Qwen: patch rows per temporal patch)
    assert len(calls) == 1 and len(calls_c) == -(-T // 2) and max(calls_c) <= 2 * rows  # really chunk by chunk
    assert stats_c[0]["segments"] == stats[0]["segments"] == len(SCENES)
    assert stats_c[0]["tokens_kept"] == stats[0]["tokens_kept"] and stats_c[0]["tokens_full"] == stats[0]["tokens_full"]
    assert torch.allclose(emb_c, emb, atol=1e-5)
    if deep is not None:  # Qwen3-VL: each deepstack level carried along the same kept rows
        assert deep_c is not None and len(deep_c) == len(deep) > 0
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(deep_c, deep))
    assert torch.equal(got, whole)


@pytest.mark.parametrize("family", ["llava-onevision", "qwen3-vl"])
def test_the_same_video_asked_twice_gets_the_same_answer(family):
    """One handle, the same request twice: nothing of the first call's stream is left for the second."""
    model, kw = _model(family), inputs(family)
    with apply(model, "tango", 0.25, chunk_frames=2) as h:
        first = model.generate(**kw, max_new_tokens=4, do_sample=False)
        stats = h.last_stats
        again = model.generate(**kw, max_new_tokens=4, do_sample=False)
        assert h.last_stats == [dict(s, prune_s=a["prune_s"]) for s, a in zip(stats, h.last_stats)]
    assert torch.equal(first, again)


@pytest.mark.parametrize("family", ["llava-onevision", "qwen2.5-vl"])
def test_given_video_tokens_are_pruned_chunk_by_chunk_as_pixels_are(family):
    """encode_videos once, then video_tokens= under chunk_frames (how eval compares methods): the stream gets the
    same chunks the chunked tower would have handed it."""
    model, kw = _model(family), inputs(family)
    opts = dict(chunk_frames=2, max_carry=1)  # an open segment closes at once: cuts unlike the whole video's
    got_px, (emb_px, _), stats_px, _ = run(model, kw, **opts)
    assert stats_px[0]["segments"] > len(SCENES)
    with apply(model, "none", 1.0) as h:
        vts = h.encode_videos(**kw)
    given = {k: v for k, v in kw.items() if k != "pixel_values_videos"}
    got, (emb, _), stats, calls = run(model, dict(given, video_tokens=vts), **opts)
    assert calls == [] and stats[0]["segments"] == stats_px[0]["segments"]
    assert stats[0]["tokens_kept"] == stats_px[0]["tokens_kept"]
    assert torch.allclose(emb, emb_px, atol=1e-5) and torch.equal(got, got_px)


@pytest.mark.parametrize("family", ["llava-onevision", "qwen3-vl"])
def test_a_batch_chunked_equals_each_video_alone(family):
    model = _model(family)
    a, b = inputs(family, 1), inputs(family, 2, scenes=[2, 3])
    if family == "llava-onevision":
        with apply(model, "tango", 0.25, chunk_frames=3):
            solo = [model.generate(input_ids=kw["input_ids"], pixel_values_videos=[kw["pixel_values_videos"][0]],
                                   max_new_tokens=4, do_sample=False)[0, kw["input_ids"].shape[1]:] for kw in (a, b)]
            S = max(kw["input_ids"].shape[1] for kw in (a, b))
            ids, mask = torch.zeros(2, S, dtype=torch.long), torch.zeros(2, S, dtype=torch.long)
            for i, kw in enumerate((a, b)):
                n = kw["input_ids"].shape[1]
                ids[i, S - n:], mask[i, S - n:] = kw["input_ids"][0], 1
            both = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                                  pixel_values_videos=[a["pixel_values_videos"][0], b["pixel_values_videos"][0]])[:, S:]
        assert torch.equal(both[0], solo[0]) and torch.equal(both[1], solo[1])
    else:
        q25.assert_batch_equals_each_alone(model, a, b, opts={"chunk_frames": 3})


def test_bad_chunk_options_are_one_line_errors():
    model = _model("llava-onevision")
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="chunk_frames must be a positive number"):
            apply(model, "tango", 0.1, chunk_frames=bad)
    with pytest.raises(ValueError, match="method 'fastvid' needs the whole video"):
        apply(model, "fastvid", 0.1, chunk_frames=4)
    with pytest.raises(ValueError, match="brief_frames is not supported with chunk_frames"):
        apply(model, "tango", 0.1, chunk_frames=4, brief_frames=2)
    with pytest.raises(ValueError, match="max_carry must be a positive"):
        apply(model, "tango", 0.1, chunk_frames=4, max_carry=0)
    assert "forward" not in model.__dict__
