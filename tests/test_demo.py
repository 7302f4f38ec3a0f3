"""Video decoding, the picture of kept tokens, fidelity metrics and the demo command."""
import numpy as np
import pytest
import torch

from tango_prune import VideoTokens, get_method
from tango_prune.eval.fidelity import coverage, fragmentation
from tango_prune.types import Pruned, positions_of

av = pytest.importorskip("av")
pytest.importorskip("matplotlib")

from tango_prune import video  # noqa: E402
from tango_prune.cli import main  # noqa: E402
from tango_prune.viz import draw_kept  # noqa: E402


def write_video(path, n=30, fps=10, h=64, w=96):
    """A moving bright square on a gradient: frame i has the square at column 2*i."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            img = np.tile(np.linspace(0, 120, w, dtype=np.uint8), (h, 1))[..., None].repeat(3, 2)
            img[20:36, 2 * i : 2 * i + 16] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_read_frames_samples_evenly_with_times(tmp_path):
    f = write_video(tmp_path / "v.mp4")
    frames, ts = video.read_frames(f, 5)
    assert frames.shape == (5, 64, 96, 3) and frames.dtype == torch.uint8
    # centres of 5 slices of 0..2.9 s (0.29, 0.87, 1.45, 2.03, 2.61), each the time of the frame nearest to it: exact
    # up to float32 rounding (a tolerance of a frame, 0.1 s, would pass a sampler off by one frame)
    assert torch.allclose(ts, torch.tensor([0.3, 0.9, 1.5, 2.0, 2.6]), atol=1e-6, rtol=0)
    assert (ts.diff() > 0).all()
    # the square moved right between the first and last sampled frames
    col = lambda fr: fr[28, :, 0].float().argmax()  # noqa: E731
    assert col(frames[-1]) > col(frames[0])
    frames, ts = video.read_frames(f, fps=2)
    assert torch.allclose(ts, torch.arange(6) * 0.5, atol=1e-6, rtol=0)  # every 5th frame from the first


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda p: p / "missing.mp4", "not found"),
        (lambda p: (p / "junk.mp4").write_bytes(b"not a video at all" * 50) and p / "junk.mp4", "cannot read"),
    ],
)
def test_read_frames_errors(tmp_path, make, needle):
    with pytest.raises(ValueError, match=needle):
        video.read_frames(make(tmp_path), 4)


def test_read_frames_too_many(tmp_path):
    f = write_video(tmp_path / "v.mp4", n=6)
    with pytest.raises(ValueError, match="has 6"):
        video.read_frames(f, 10)


def test_patchify_is_row_major():
    frames = torch.zeros(1, 4, 6, 3, dtype=torch.uint8)
    frames[0, 2:4, 4:6] = 255  # patch (row 1, col 2) of a 2x3 grid
    p = video.patchify(frames, 2)
    assert p.shape == (1, 6, 12)
    assert p[0].sum(-1).argmax() == 1 * 3 + 2


def hand_pruned(assignment, grid, kept):
    idx = torch.tensor(kept)
    return Pruned(idx, torch.zeros(len(kept), 2), positions_of(idx, grid), [grid[0]],
                  torch.zeros(len(kept), dtype=torch.bool), torch.tensor(assignment), grid)


def test_fragmentation_counts_pieces_per_cluster_and_frame():
    # one frame 3x3; cluster 0 = left column (one piece), cluster 1 = two opposite corners (two pieces)
    a = [0, -1, 1,
         0, 2, -1,
         0, -1, 1]
    # cluster 1's members at (0,2) and (2,2) are not 4-connected; cluster 2 is a singleton (not a cluster)
    assert fragmentation(hand_pruned(a, (1, 3, 3), [0, 2, 4])) == pytest.approx(1.5)
    # a cluster spanning two frames in one blob each counts 1 per frame
    assert fragmentation(hand_pruned([0, 0, 0, 0], (2, 1, 2), [0])) == pytest.approx(1.0)
    assert np.isnan(fragmentation(hand_pruned([0, 1], (1, 1, 2), [0, 1])))


def test_coverage_is_one_when_everything_is_kept_and_uses_nearest_for_drops():
    f = torch.randn(2, 4, 8)
    vt = VideoTokens(f, torch.rand(2, 4), (2, 2, 2))
    assert coverage(vt, get_method("none")()(vt)) == pytest.approx(1.0, abs=1e-5)
    kept = torch.tensor([0])
    out = Pruned(kept, f.reshape(8, 8)[kept], positions_of(kept, (2, 2, 2)), [2], torch.zeros(1, dtype=torch.bool),
                 torch.tensor([0] + [-1] * 7), (2, 2, 2))
    want = torch.nn.functional.cosine_similarity(f.reshape(8, 8), f.reshape(8, 8)[:1]).mean()
    assert coverage(vt, out) == pytest.approx(float(want), abs=1e-5)


def test_draw_kept_writes_png(tmp_path):
    frames = torch.randint(0, 255, (3, 8, 12, 3), dtype=torch.uint8)
    vt = VideoTokens(torch.randn(3, 6, 16), torch.rand(3, 6), (3, 2, 3))
    out = get_method("tango")(retention=0.3)(vt)
    p = draw_kept(frames, out, tmp_path / "k.png", "title")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="do not tile"):
        draw_kept(frames[:, :7], out, tmp_path / "x.png")


def test_demo_on_a_video(tmp_path, capsys):
    f = write_video(tmp_path / "v.mp4")
    png = tmp_path / "demo.png"
    assert main(["demo", "--video", str(f), "--frames", "8", "--height", "64", "--no-model", "-o", str(png)]) == 0
    out = capsys.readouterr().out
    assert "8 frames" in out and "tango" in out and str(png) in out
    assert png.stat().st_size > 1000


def test_demo_answers_with_the_testbed_model(tmp_path, capsys):
    png = tmp_path / "qa.png"
    assert main(["demo", "--question", "location", "-o", str(png)]) == 0
    out = capsys.readouterr().out
    lines = [x for x in out.splitlines() if "answer (" in x]
    assert len(lines) == 2 and "1024 of 1024" in lines[0] and "tango @ 0.1" in lines[1]
    assert "truth: (" in out and str(png) in out and png.stat().st_size > 1000


def test_demo_errors_are_one_line(tmp_path, capsys):
    assert main(["demo", "--video", str(tmp_path / "nope.mp4")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not found" in err
    with pytest.raises(SystemExit) as e:
        main(["demo", "--retention", "2"])
    assert e.value.code == 2


def test_viz_one_method_and_compare(tmp_path, capsys):
    f = write_video(tmp_path / "v.mp4")
    one, many = tmp_path / "one.png", tmp_path / "many.png"
    assert main(["viz", str(f), "--frames", "6", "--retention", "0.2", "-o", str(one)]) == 0
    assert main(["viz", str(f), "--frames", "6", "--compare", "tango,topk,uniform", "-o", str(many)]) == 0
    assert one.read_bytes()[:4] == b"\x89PNG" and many.stat().st_size > one.stat().st_size / 2
    capsys.readouterr()
    assert main(["viz", str(f), "--compare", "tango,nosuch", "-o", str(many)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown method" in err


def test_demo_pixel_tokens_say_so(tmp_path, capsys):
    f = write_video(tmp_path / "v.mp4")
    assert main(["demo", "--video", str(f), "--frames", "4", "--tokens", "pixels", "--height", "64",
                 "-o", str(tmp_path / "d.png")]) == 0
    assert "pixel-patch features" in capsys.readouterr().out
