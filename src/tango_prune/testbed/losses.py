"""Training-only losses of tango_prune.testbed.train (nothing of them is committed with the weights): the dense
object-coverage and shape targets, and the attention supervision that keeps the answer's reading off the background."""
from __future__ import annotations

import torch


def aux_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dense auxiliary target: each video token predicts how much of its cell the object covers (BCE on the share;
    positives are rare, so they weigh 5x). Trains only through training; nothing of it is committed."""
    return torch.nn.functional.binary_cross_entropy_with_logits(pred.reshape(target.shape), target,
                                                                pos_weight=torch.tensor(5.0))


OBJECT = 0.05  # a video token whose cell the object covers at least this much counts as the object's


class Heads(torch.nn.Module):
    """Training-only heads on video tokens (the projector's output, or an LM layer's states at the video positions):
    each token predicts how much of its cell the object covers (``aux_loss``), and, where that is at least
    ``shape_min``, which shape it is (4-way CE). They make the projector carry what the questions ask about before
    the LM has learnt to read it."""

    def __init__(self, width: int, shapes: int = 4) -> None:
        super().__init__()
        self.cover = torch.nn.Linear(width, 1)
        self.shape = torch.nn.Linear(width, shapes)

    def losses(self, tokens: torch.Tensor, cover: torch.Tensor, shapes: torch.Tensor, shape_min: float):
        """(coverage loss, shape loss) over (N, D) tokens with their (N,) coverage and shape index (-1: none)."""
        x = tokens.float()
        on = (cover >= shape_min) & (shapes >= 0)
        shape = torch.nn.functional.cross_entropy(self.shape(x[on]), shapes[on]) if on.any() else x.new_zeros(())
        return aux_loss(self.cover(x), cover.float()), shape


class AttentionTap:
    """Captures each decoder layer's attention input (normed hidden states and RoPE cos/sin) with forward pre-hooks,
    so that the attention of a few query rows can be recomputed for a loss while the model itself keeps sdpa (eager
    attention with output_attentions cost 3.3 s per step here instead of ~1.3). Removed with close()."""

    def __init__(self, decoder) -> None:
        self.inputs: list = []
        self.layers = list(decoder.layers)
        self.hooks = [layer.self_attn.register_forward_pre_hook(self._keep, with_kwargs=True) for layer in self.layers]

    def _keep(self, module, args, kwargs):
        self.inputs.append((kwargs.get("hidden_states", args[0] if args else None), kwargs["position_embeddings"]))

    def close(self) -> None:
        for h in self.hooks:
            h.remove()


def tapped_attention(tap: AttentionTap, take: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Per decoder layer, the attention probabilities (B, heads, Q, L) of query rows ``take`` (B, Q), recomputed in
    float32 from the tapped inputs exactly as the model attends (RoPE, grouped KV heads, causal, padding masked)."""
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

    B, L = mask.shape
    keys = torch.arange(L)[None, None, :]
    # a padding row (taken to fill Q, weighed 0 by the loss) sees itself, not nothing: no NaN from an empty softmax
    allowed = (mask.bool()[:, None, :] & (keys <= take[:, :, None])) | (keys == take[:, :, None])
    out = []
    for layer, (h, (cos, sin)) in zip(tap.layers, tap.inputs):
        att = layer.self_attn
        hd = att.head_dim
        q = att.q_proj(h).view(B, L, -1, hd).transpose(1, 2)
        k = att.k_proj(h).view(B, L, -1, hd).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        q = torch.gather(q, 2, take[:, None, :, None].expand(-1, q.shape[1], -1, hd))  # (B, H, Q, hd)
        scores = (q.float() @ k.float().transpose(2, 3)) * att.scaling
        out.append(scores.masked_fill(~allowed[:, None], float("-inf")).softmax(-1))
    return out


def background_attention_loss(tap: AttentionTap, is_video: torch.Tensor, obj: torch.Tensor, mask: torch.Tensor,
                              max_queries: int = 192) -> torch.Tensor:
    """-log(1 - the attention mass on background video tokens), averaged over layers, heads and the queries that
    answer: every text position after the video and (up to max_queries in all) the object's tokens. Full tokens
    only: it teaches the decoder to read the object and the text - the premise of every pruning method, that answers
    live in few tokens - instead of averaging over the whole clip, which made the committed decoder lose 36% of its
    accuracy with an oracle keeping only the object's tokens (tango_prune.testbed.oracle)."""
    B, L = is_video.shape
    background = is_video & ~obj
    after = (torch.cumsum(is_video.long(), 1) == is_video.sum(1, keepdim=True)) & ~is_video & mask.bool()
    # rank the query rows: text after the video first, then object tokens in random order; keep max_queries per clip
    rank = after.float() * 2 + obj.float() * (1 + torch.rand(B, L))
    rows = rank.topk(min(max_queries, L), dim=1)
    take, valid = rows.indices, (rows.values > 0).float()  # (B, Q)
    total = 0.0
    probs = tapped_attention(tap, take, mask)
    for p in probs:
        mass = (p * background[:, None, None, :]).sum(-1).clamp(max=1 - 1e-4)  # (B, H, Q)
        total = total + ((-torch.log1p(-mass)) * valid[:, None]).sum() / (valid.sum() * p.shape[1])
    return total / len(probs)
