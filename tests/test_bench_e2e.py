"""The TTFT profiler: FLOPs model against hand counts, and an end-to-end run on tiny configs with every JSON field."""
import json

import pytest

pytest.importorskip("transformers")

from tango_prune.bench import archs  # noqa: E402
from tango_prune.bench.archs import Shape, llm_prefill_flops, vit_flops  # noqa: E402
from tango_prune.cli import main  # noqa: E402

TINY_VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=112,
                patch_size=14)
TINY_LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=400)
TINY_QWEN_VIT = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                     spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1],
                     in_channels=3, tokens_per_second=2)
TINY_QWEN3_VIT = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
                      spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                      deepstack_visual_indexes=[0, 1], in_channels=3)
FIELDS = {"arch", "frames", "method", "retention", "dtype", "device", "vision_s", "saliency_s", "prune_s", "prefill_s",
          "ttft_s", "decode_tok_s", "peak_mem_gb", "flops_vision", "flops_llm", "limit_speedup", "speedup", "estimated"}


def test_vit_flops_by_hand():
    # 4 tokens, width 2, MLP 3, one layer, patch dim 5:
    # patch embed 2*4*5*2 = 80; q,k,v,o 2*4*4*2*2 = 128; MLP 2*4*2*2*3 = 96; attention 2*2*4*4*2 = 128
    assert vit_flops(Shape(tokens=4, hidden=2, mlp=3, layers=1), patch_dim=5) == 80 + 128 + 96 + 128
    # gated MLP adds a third matrix; a window of 2 halves the attention term
    assert vit_flops(Shape(4, 2, 3, 1, gated=True, span=2), 5) == 80 + 128 + 144 + 64


def test_llm_flops_by_hand():
    # 3 tokens, width 4, MLP 5, kv 2, 1 layer, vocab 7:
    # projections 2*3*(2*16 + 2*8 + 3*20) = 648; causal attention 2*2*(3*4/2)*4 = 96; LM head (last token) 2*4*7 = 56
    assert llm_prefill_flops(3, 4, 5, 1, 2, 7) == 648 + 96 + 56


@pytest.fixture
def tiny_archs(monkeypatch):
    monkeypatch.setitem(archs.ARCHS, "tiny-ov", ("llava", TINY_VIT, TINY_LLM))
    monkeypatch.setitem(archs.ARCHS, "tiny-qwen", ("qwen", TINY_QWEN_VIT, TINY_LLM))
    monkeypatch.setitem(archs.ARCHS, "tiny-qwen3", ("qwen3", TINY_QWEN3_VIT, dict(TINY_LLM, head_dim=16)))


@pytest.mark.parametrize("arch", ["tiny-ov", "tiny-qwen", "tiny-qwen3"])
def test_bench_runs_end_to_end_with_every_field(arch, tiny_archs, tmp_path, capsys):
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    assert main(["bench", "--arch", arch, "--frames", "4", "--methods", "none,tango,topk", "--retention", "0.25",
                 "--repeats", "1", "--decode-tokens", "2", "--json", str(out), "--plot", str(png), "--quiet"]) == 0
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 3 and all(FIELDS <= set(r) for r in rows)
    none = next(r for r in rows if r["method"] == "none")
    tango = next(r for r in rows if r["method"] == "tango")
    assert none["speedup"] == pytest.approx(1.0) and tango["flops_llm"] < none["flops_llm"]
    assert tango["flops_vision"] == none["flops_vision"] > 0 and not tango["estimated"]
    assert tango["ttft_s"] == pytest.approx(tango["vision_s"] + tango["saliency_s"] + tango["prune_s"] + tango["prefill_s"])
    assert png.read_bytes()[:4] == b"\x89PNG" and "TTFT s" in capsys.readouterr().out


def test_bench_layers_is_labelled_estimated(tiny_archs, tmp_path):
    out = tmp_path / "b.json"
    assert main(["bench", "--arch", "tiny-ov", "--frames", "4", "--methods", "none", "--layers", "1", "--repeats", "1",
                 "--decode-tokens", "0", "--json", str(out), "--quiet"]) == 0
    assert all(r["estimated"] for r in json.loads(out.read_text())["results"])


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message for machines without a GPU")
def test_bench_cuda_without_gpu_is_a_one_line_error(capsys):
    assert main(["bench", "--arch", "llava-ov-0.5b", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CUDA" in err


def test_bench_vllm_engine_needs_the_vllm_venv(tmp_path, capsys):
    assert main(["bench", "--engine", "vllm", "--arch", "qwen2.5-vl-3b", "--vllm-python", str(tmp_path / "none")]) == 2
    assert "scripts/setup.sh vllm" in capsys.readouterr().err


def test_bench_vllm_rows_relate_every_method_to_stock_and_to_uniform():
    from tango_prune.bench.vllm_engine import ARCHS, format_rows, relate

    rows = relate([dict(frames=16, method="none", retention=1.0, ttft_s=10.0, prompt_tokens=1000),
                   dict(frames=16, method="uniform", retention=0.1, ttft_s=4.0, prompt_tokens=200),
                   dict(frames=16, method="tango", retention=0.1, ttft_s=5.0, prompt_tokens=200)])
    assert rows[0]["speedup"] == 1.0 and rows[0]["limit_speedup"] == 1.0
    assert "| 16 | tango | 0.1 | 200 | 5.00 | 2.00x | 2.50x | 80% | +1.00 |" in format_rows(rows)
    assert ARCHS["qwen2.5-vl-3b"][0]["num_hidden_layers"] == 36


def test_random_weights_are_n002_distinct_rows_and_reproducible(tiny_archs):
    import torch

    a, _ = archs.build("tiny-ov", torch.float32)
    b, _ = archs.build("tiny-ov", torch.float32)
    w = a.get_input_embeddings().weight
    assert torch.equal(w, b.get_input_embeddings().weight)  # same seed, same model
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002
    assert torch.unique(w, dim=0).shape[0] == w.shape[0]
    # past one tile (2^20 - 3 values) the rows are shifts of it, not copies: a 3584-wide matrix's rows stay distinct
    flat = torch.empty(3 * archs._TILE)
    archs._tile_into(flat, torch.arange(archs._TILE, dtype=torch.float32))
    rows = flat[: (flat.numel() // 3584) * 3584].view(-1, 3584)
    assert torch.unique(rows, dim=0).shape[0] == rows.shape[0]
    assert flat[archs._TILE] == 0 and flat[-1] == archs._TILE - 1
