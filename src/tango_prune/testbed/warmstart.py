"""How a fresh projector starts before the main training: whitened input (both testbeds) and, optionally, a few
minutes against a throw-away probe (v1's committed run)."""
from __future__ import annotations

import time

import numpy as np
import torch

from .data import TYPES


@torch.no_grad()
def whiten_projector(model, feats: np.ndarray) -> None:
    """Fold per-channel standardisation of the tower's features (any shape ending in 384) into the projector's first
    linear layer (an initialisation; the class is unchanged). DINOv2's last hidden state (before its final norm) has
    two channels with means of ~20 against a median channel std of 1.3: unwhitened, every projected token looks
    alike at init and v1's training sat at chance (measured: 250 decoder steps, 500 probe steps, held-out 0.245)."""
    x = torch.from_numpy(feats.astype(np.float32)).reshape(-1, feats.shape[-1])
    mu, sigma = x.mean(0), x.std(0).clamp_min(1e-3)
    lin = model.model.multi_modal_projector.linear_1
    w = lin.weight / sigma  # W (x - mu) / sigma + b  ==  (W / sigma) x + (b - (W / sigma) mu)
    lin.bias -= w @ mu
    lin.weight.copy_(w)


class Probe(torch.nn.Module):
    """A throw-away reader for pre-training the projector: per-type learned queries attend over the pooled video
    tokens (plus learned position embeddings; padding masked), an MLP gives the 4 option logits. Only the projector
    is kept."""

    def __init__(self, d: int, tokens: int, queries: int = 4) -> None:
        super().__init__()
        self.pos = torch.nn.Parameter(torch.randn(tokens, d) * 0.02)
        self.q = torch.nn.Parameter(torch.randn(len(TYPES), queries, d) * 0.02)
        self.attn = torch.nn.MultiheadAttention(d, 4, batch_first=True)
        self.head = torch.nn.Sequential(torch.nn.LayerNorm(queries * d), torch.nn.Linear(queries * d, 256),
                                        torch.nn.GELU(), torch.nn.Linear(256, 4))

    def forward(self, videos: list[torch.Tensor], qtype: torch.Tensor) -> torch.Tensor:
        n = max(len(x) for x in videos)
        kv = torch.stack([torch.cat([x, x.new_zeros(n - len(x), x.shape[1])]) for x in videos]) + self.pos[:n]
        pad = torch.stack([torch.arange(n) >= len(x) for x in videos])
        o, _ = self.attn(self.q[qtype], kv, kv, key_padding_mask=pad, need_weights=False)
        return self.head(o.flatten(1))


def pretrain_projector(model, tokens, meta: list[dict], train_idx, val_idx, minutes: float, batch: int, rng,
                       max_tokens: int, aux=None, aux_params=(), bf16: bool = False, log=print) -> None:
    """``minutes`` of the projector (and ``aux(idx, videos) -> loss`` with its ``aux_params``: the coverage heads)
    against a Probe. ``tokens(idx) -> list of pooled videos`` runs the projector on cached features."""
    inner = model.model
    probe = Probe(inner.multi_modal_projector.linear_2.out_features, max_tokens)
    opt = torch.optim.AdamW([{"params": inner.multi_modal_projector.parameters(), "lr": 1e-3},
                             {"params": [*probe.parameters(), *aux_params], "lr": 1e-3}], weight_decay=0.01)

    def logits(idx):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            videos = tokens(idx)
            out = probe(videos, torch.tensor([TYPES.index(meta[i]["qtype"]) for i in idx])).float()
            return out, (aux(idx, videos) if aux is not None else 0.0)

    t0, step = time.time(), 0
    while time.time() - t0 < minutes * 60:
        idx = rng.choice(train_idx, size=batch, replace=False)
        out, extra = logits(idx)
        loss = torch.nn.functional.cross_entropy(out, torch.tensor([meta[i]["answer"] for i in idx])) + extra
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            with torch.no_grad():
                pred = torch.cat([logits(val_idx[s : s + 32])[0].argmax(-1) for s in range(0, len(val_idx), 32)])
            acc = float((pred == torch.tensor([meta[i]["answer"] for i in val_idx])).float().mean())
            log({"probe_step": step, "time_s": round(time.time() - t0), "loss": round(loss.item(), 4), "eval": acc})
