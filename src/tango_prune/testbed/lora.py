"""Low-rank adapters for a frozen pretrained LM (v2's SmolLM2): trained as forward hooks, so the modules stay the
stock ``nn.Linear``; merged into the weights for inference, so the loaded model is the stock class."""
from __future__ import annotations

import torch

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RANK, ALPHA = 16, 32.0  # v2's


class LoRA(torch.nn.Module):
    """Low-rank updates W + (alpha / r) B A on the LM's projections: forward hooks while training (the modules stay
    stock ``nn.Linear``), ``merge()`` for inference. B starts at zero, so training starts from SmolLM2 itself."""

    def __init__(self, lm, rank: int = RANK, alpha: float = ALPHA, targets=TARGETS) -> None:
        super().__init__()
        self.scale, self.rank = alpha / rank, rank
        self.names = [n for n, m in lm.named_modules() if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in targets]
        mods = dict(lm.named_modules())
        self.A = torch.nn.ParameterDict()
        self.B = torch.nn.ParameterDict()
        for n in self.names:
            lin = mods[n]
            key = n.replace(".", "__")
            self.A[key] = torch.nn.Parameter(torch.randn(rank, lin.in_features) / lin.in_features**0.5)
            self.B[key] = torch.nn.Parameter(torch.zeros(lin.out_features, rank))
        self._hooks: list = []
        self._lm = [lm]  # in a list: not a submodule, so parameters() and state_dict() hold the factors only

    def attach(self) -> "LoRA":
        mods = dict(self._lm[0].named_modules())
        for n in self.names:
            key = n.replace(".", "__")

            def hook(mod, args, out, key=key):
                x = args[0]
                return out + (x @ self.A[key].to(x.dtype).T) @ self.B[key].to(x.dtype).T * self.scale

            self._hooks.append(mods[n].register_forward_hook(hook))
        return self

    def detach_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into the weights for good (hooks removed first)."""
        self.detach_hooks()
        mods = dict(self._lm[0].named_modules())
        for n in self.names:
            key = n.replace(".", "__")
            w = mods[n].weight
            w.add_((self.B[key].float() @ self.A[key].float() * self.scale).to(w.dtype))
