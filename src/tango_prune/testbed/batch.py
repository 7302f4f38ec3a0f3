"""Training batches from cached tower features, built exactly as the stock forward builds its inputs (projector ->
the class's pooling -> frames in order -> image_newline, scattered into the prompt's placeholders), for clips of
different lengths and layouts, left padded."""
from __future__ import annotations

import numpy as np
import torch

from .data import COLOURS, describe
from .prompt import LETTERS, input_ids
from .variants import Variant

# Mixed layouts (train --stock-share below 1): tokens per frame side and how often each is drawn, for v1's 8 x 8;
# a coarser variant draws from the sides up to its own.
SIDES, SIDE_P = (8, 6, 4, 3, 2), (0.3, 0.15, 0.25, 0.15, 0.15)


def mixed_grids(rng: np.random.Generator, frames: list[int], grid: int) -> list[np.ndarray]:
    """Per clip, tokens-per-side for each frame, drawn independently of the content: every frame stays whole, only
    its resolution changes (as in LLaVA-Video's slow-fast frames or AnyRes), so this is still full-token data.
    Why: trained on one layout only, v1's decoder read frame and position off the 1-D index and fell to chance
    whenever tokens were removed and the rest renumbered (tango_prune.testbed.layout_probe)."""
    sides = [s for s in SIDES if s <= grid]
    p = np.array([q for s, q in zip(SIDES, SIDE_P) if s <= grid])
    return [rng.choice(sides, size=t, p=p / p.sum()) for t in frames]


def pool_frames(model, feats: list[torch.Tensor], grids: list[np.ndarray] | None = None) -> list[torch.Tensor]:
    """Per clip ((T, patches, 384) tower features), its projected video tokens frame by frame, (T * g * g, D): the
    stock 2 x 2 bilinear pooling when grids is None, else each frame average-pooled to its own side (pooling to the
    stock side this way equals the stock pooling)."""
    inner = model.model
    out = []
    for k, f in enumerate(feats):
        proj = inner.multi_modal_projector(f)
        if grids is None:
            out.append(inner.apply_pooling(proj).flatten(0, 1))
            continue
        T, P, D = proj.shape
        side = int(round(P**0.5))
        frames = proj.reshape(T, side, side, D).permute(0, 3, 1, 2)
        out.append(torch.cat([torch.nn.functional.adaptive_avg_pool2d(frames[t], int(g)).flatten(1).T
                              for t, g in enumerate(grids[k])]))
    return out


def pool_targets(cover: np.ndarray, grids: np.ndarray | None) -> torch.Tensor:
    """One clip's object coverage per token ((T, grid * grid), from ``data.object_labels``) laid out like
    pool_frames' tokens."""
    f = torch.from_numpy(cover.astype(np.float32))
    if grids is None:
        return f.reshape(-1)
    side = int(round(f.shape[1] ** 0.5))
    m = f.reshape(len(f), 1, side, side)
    return torch.cat([torch.nn.functional.adaptive_avg_pool2d(m[t], int(g)).reshape(-1) for t, g in enumerate(grids)])


def pool_shapes(shapes: np.ndarray, sizes: list[int]) -> torch.Tensor:
    """One clip's shape index per frame (-1: none) repeated over that frame's tokens."""
    return torch.cat([torch.full((n,), int(s), dtype=torch.long) for s, n in zip(shapes, sizes)])


def batch_embeds(model, v: Variant, videos: list[torch.Tensor], metas: list[dict], tok,
                 replies: list[list[int]] | None = None):
    """Inputs embeddings exactly as the stock forward builds them, for a batch of clips' video tokens (pool_frames),
    left padded, with position ids that skip the padding. ``replies`` (token ids per clip) follow each prompt
    (teacher forcing), so a clip's prompt ends len(reply) before its row's end. Returns (embeds, mask,
    position_ids, is_video), is_video marking the video tokens (not the newline)."""
    inner = model.model
    embed = inner.get_input_embeddings()
    vid = model.config.video_token_id
    rows = []
    for k, (video, m) in enumerate(zip(videos, metas)):
        ids = input_ids(v, (m["question"], m["options"]), video_tokens=len(video) + 1, tok=tok)[0]
        if replies is not None:
            ids = torch.cat([ids, torch.tensor(replies[k], dtype=ids.dtype)])
        e = embed(ids)
        at = ids == vid
        e = e.masked_scatter(at[:, None], torch.cat([video, inner.image_newline[None].to(video)]).to(e.dtype))
        rows.append((e, at & (at.cumsum(0) <= len(video))))
    n = max(len(e) for e, _ in rows)
    pad = embed(torch.tensor([tok.pad_token_id]))[0]
    emb = torch.stack([torch.cat([pad.expand(n - len(e), -1), e]) for e, _ in rows])
    mask = torch.stack([torch.cat([torch.zeros(n - len(e), dtype=torch.long), torch.ones(len(e), dtype=torch.long)])
                        for e, _ in rows])
    is_video = torch.stack([torch.cat([torch.zeros(n - len(e), dtype=torch.bool), iv]) for e, iv in rows])
    return emb, mask, (mask.cumsum(-1) - 1).clamp_min(0), is_video


def reply_ids(v: Variant, meta: dict, cover: np.ndarray, shapes: np.ndarray, tok) -> list[int]:
    """The assistant's reply used with ``train --caption``: the answer's letter, a newline, ``data.describe``'s
    caption of the clip and <|im_end|>. The letter comes first, so what eval reads (the first token) is unchanged."""
    if v.lm == "scratch":
        raise ValueError(f"--caption needs a pretrained LM's tokenizer; {v.name}'s vocabulary has only the templates' words")
    colour = next(c for c in COLOURS if c in meta["question"].lower().replace("?", " ").replace(".", " ").split())
    text = "\n" + describe(cover, shapes, colour) + "<|im_end|>"
    return [tok.convert_tokens_to_ids(LETTERS[meta["answer"]])] + tok(text, add_special_tokens=False).input_ids
