"""The testbed's clips and questions: deterministic, and every answer is what the frames show."""
import numpy as np
import pytest
import torch

pytest.importorskip("av")

from tango_prune.testbed import data as td  # noqa: E402

from .test_demo import write_video  # noqa: E402


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    d = tmp_path_factory.mktemp("bg")
    write_video(d / "a.mp4", n=40, h=120, w=160)
    return td.generate(40, seed=3, videos=d), d


def object_frames(s):
    """(frame index -> (rows, cols) of pixels painted in the question's colour)."""
    colour = next(c for c in td.COLOURS if c in s.question)
    rgb = torch.tensor(td.COLOURS[colour], dtype=torch.uint8)
    hit = (s.frames == rgb).all(-1)
    return {t: hit[t].nonzero() for t in range(td.FRAMES) if hit[t].any()}


def test_deterministic_from_seed(samples):
    s, d = samples
    again = td.generate(5, seed=3, videos=d)
    for a, b in zip(s[:5], again):
        assert torch.equal(a.frames, b.frames) and a.question == b.question and a.options == b.options
    other = td.generate(5, seed=4, videos=d)
    assert any(not torch.equal(a.frames, b.frames) for a, b in zip(s[:5], other))


def test_every_type_four_options_and_answers_spread(samples):
    s, _ = samples
    assert {x.qtype for x in s} == set(td.TYPES)
    assert all(len(x.options) == 4 and 0 <= x.answer < 4 and len(set(x.options)) == 4 for x in s)
    assert len({x.answer for x in s}) == 4
    assert "(A)" in s[0].prompt() and "(D)" in s[0].prompt()


def test_answers_match_the_frames(samples):
    s, _ = samples
    for x in s:
        seen = object_frames(x)
        answer = x.options[x.answer]
        if x.qtype == "brief_shape":
            assert 1 <= len(seen) <= 2
        elif x.qtype == "direction":
            first, last = seen[min(seen)].float().mean(0), seen[max(seen)].float().mean(0)
            dy, dx = (last - first).tolist()
            moved = {"left": -dx, "right": dx, "up": -dy, "down": dy}
            assert max(moved, key=moved.get) == answer and len(seen) == td.FRAMES
        elif x.qtype == "count":
            runs = np.diff(np.array(sorted(seen))) > 1
            assert int(runs.sum()) + 1 == int(answer)
        elif x.qtype == "location":
            cy, cx = torch.cat(list(seen.values())).float().mean(0).tolist()
            quad = ("bottom" if cy >= td.SIZE / 2 else "top") + " " + ("right" if cx >= td.SIZE / 2 else "left")
            assert quad == answer
        elif x.qtype == "order":
            assert len(seen) == 6 and min(seen) < td.FRAMES // 2


def test_shapes_are_distinct_masks():
    masks = {s: td.shape_mask(s) for s in td.SHAPES}
    for a in td.SHAPES:
        for b in td.SHAPES:
            if a != b:
                assert (masks[a] ^ masks[b]).mean() > 0.1


def test_bad_videos_folder(tmp_path):
    with pytest.raises(ValueError, match="folder"):
        td.generate(2, videos=tmp_path / "nope")
    with pytest.raises(ValueError, match="no background videos"):
        td.generate(2, videos=tmp_path)


def test_object_fraction_is_where_the_object_is(samples):
    """The oracle's and the auxiliary loss's ground truth: per pooled token, the share of its cell the object
    covers, zero in frames without it and on cells away from it."""
    s_all, d = samples
    bg = td.Backgrounds(sorted(d.iterdir()))
    for i in (0, 2):  # brief_shape (1-2 frames), count (blinks)
        s = s_all[i]
        f = td.object_labels(td.V1, 3, i, bg, 8)[0]
        assert f.shape == (td.FRAMES, 64) and f.min() >= 0 and f.max() <= 1
        shown = object_frames(s)
        assert set(np.nonzero(f.sum(1) > 0)[0].tolist()) == set(shown)
        for t, px in shown.items():  # the painted pixels' cells are covered
            cells = set((px[:, 0] // 28 * 8 + px[:, 1] // 28).tolist())
            assert all(f[t, c] > 0 for c in cells)


def test_object_labels_name_the_shape_in_each_frame(samples):
    """The shape loss's targets: a frame has a shape exactly where the object covers something, and it is the one
    the question is about (order: the first one shown is the answer)."""
    s_all, d = samples
    bg = td.Backgrounds(sorted(d.iterdir()))
    for i in range(len(td.TYPES)):
        s = s_all[i]
        frac, shape = td.object_labels(td.V1, 3, i, bg, 8)
        assert shape.shape == (td.FRAMES,) and frac.shape == (td.FRAMES, 64)
        assert np.array_equal(shape >= 0, frac.sum(1) > 0)
        named = [td.SHAPES[k] for k in shape if k >= 0]
        if s.qtype == "order":
            assert named[0] == s.options[s.answer] and len(set(named)) == 2
        elif s.qtype == "brief_shape":
            assert set(named) == {s.options[s.answer]}
        else:  # the question names the shape
            assert set(named) == {next(x for x in td.SHAPES if f" {x} " in s.question)}
