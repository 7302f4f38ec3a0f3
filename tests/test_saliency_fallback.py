"""The fallback saliency (mean attention each token receives in the feature layer) is the same quantity however it
is computed: the cache-sized implementation against the reference one-liner, the tower's own hooked q/k against
recomputed ones, and the LLaVA adapter takes the hooked ones."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from tango_prune.core.saliency import mean_attention_received  # noqa: E402
from tango_prune.models import apply  # noqa: E402
from tango_prune.models.saliency import _qk, attention_received, cls_attention, hook_qk, qk_from_hook  # noqa: E402
from tango_prune.models.zoo import tiny_model  # noqa: E402

RTOL = 2e-6  # float32 rounding order; a wrong formula or bfloat16 scores miss it by orders of magnitude


def reference(q, k, scale):
    """The definition, as the adapter computed it before: one float32 softmax over the whole batch."""
    return torch.softmax(q.float() @ k.float().transpose(-1, -2) * scale, dim=-1).mean(dim=(1, 2))


def close(a, b):
    return a.shape == b.shape and bool(((a - b).abs() <= RTOL * b.abs()).all())


def kept(sal, frac=0.1):
    """Each image's top tokens, as a saliency-ranked pruner keeps them."""
    return torch.topk(sal, max(1, int(sal.shape[1] * frac)), dim=1).indices.sort(dim=1).values


def qk(n=3, heads=4, N=50, d=16, spread=1.0, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(n, N, heads, d, generator=g).mul(spread).to(dtype).transpose(1, 2) for _ in range(2))
    return q, k, d**-0.5


@pytest.mark.parametrize("spread", [0.3, 1.0, 3.0])  # flat, typical and peaky attention (logits up to ~60)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_equals_the_reference_definition(spread, dtype):
    for seed, shape in enumerate([dict(n=3, heads=4, N=50, d=16), dict(n=2, heads=3, N=197, d=64),
                                  dict(n=1, heads=16, N=729, d=72)]):
        q, k, s = qk(spread=spread, dtype=dtype, seed=seed, **shape)
        got, ref = mean_attention_received(q, k, s), reference(q, k, s)
        assert got.dtype == torch.float32 and close(got, ref), ((got - ref).abs() / ref).max()
        assert torch.equal(kept(got), kept(ref))


def test_a_wrong_implementation_fails_the_check():
    q, k, s = qk(spread=2.0, N=100)
    ref = reference(q, k, s)
    wrong = {
        "rows, not columns": torch.softmax(q @ k.mT * s, dim=-2).mean(dim=(1, 2)),
        "no scale": reference(q, k, 1.0),
        "bfloat16 scores": torch.softmax(q.bfloat16() @ k.bfloat16().mT * s, dim=-1).float().mean(dim=(1, 2)),
        "heads swapped between images": reference(q, k.roll(1, dims=0), s),
        "last query dropped": torch.softmax(q[:, :, :-1] @ k.mT * s, dim=-1).mean(dim=(1, 2)),
    }
    assert close(mean_attention_received(q, k, s), ref)
    for name, w in wrong.items():
        assert not close(w, ref), name


def siglip_layer(hidden=64, heads=4, seed=0):
    cfg = transformers.SiglipVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=heads,
                                          num_hidden_layers=1, image_size=56, patch_size=14)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return transformers.models.siglip.modeling_siglip.SiglipEncoderLayer(cfg).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_towers_own_qk_give_the_recomputed_map_and_the_hooks_go(dtype):
    layer = siglip_layer().to(dtype)
    hidden = torch.randn(5, 37, 64).to(dtype)
    with torch.no_grad(), hook_qk(layer) as got:
        layer(hidden, None)
    for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
        assert not proj._forward_hooks
    hooked = qk_from_hook(layer, got)
    assert hooked is not None and hooked[0].dtype == dtype
    q, k, s = _qk(layer, hidden)
    assert torch.equal(hooked[0].float(), q) and torch.equal(hooked[1].float(), k)
    ref = reference(q, k, s)
    for sal in (attention_received(layer, None, qk=hooked), attention_received(layer, hidden),
                attention_received(layer, hidden, chunk=2)):
        assert close(sal, ref)
    assert torch.allclose(cls_attention(layer, None, qk=hooked), cls_attention(layer, hidden), rtol=1e-6, atol=0)
    assert qk_from_hook(layer, {"q": [], "k": []}) is None  # the projections did not run: recompute


def test_llava_adapter_shares_the_towers_projections():
    """With the hook the map's layer runs its q projection once (in the tower), and the map equals the recomputed one."""
    model = tiny_model("llava-onevision")
    tower = model.model.vision_tower
    block = getattr(tower, "vision_model", tower).encoder.layers[-1]
    calls = []
    spy = block.self_attn.q_proj.register_forward_hook(lambda *a: calls.append(1))
    pv = torch.randn(1, 3, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    try:
        with apply(model, "tango", 0.25, saliency="attention") as h:
            (vt,), (source,) = h.encode({"pixel_values_videos": pv}, {})
            n_encode = len(calls)
            hs = model.model.vision_tower(pv[0], output_hidden_states=True).hidden_states
            recomputed, _ = h._saliency(hs, -1, "full")  # no hooked q/k: from the layer's input
    finally:
        spy.remove()
    assert source == "attention-received" and n_encode == 1  # the tower's own pass only: nothing recomputed
    assert not block.self_attn.q_proj._forward_hooks and not block.self_attn.k_proj._forward_hooks
    pooled = model.model.apply_pooling(recomputed.unsqueeze(-1).to(vt.features.dtype)).squeeze(-1).float()
    assert torch.allclose(vt.saliency, pooled, rtol=1e-5, atol=0)
