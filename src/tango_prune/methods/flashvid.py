"""FlashVID (Fan et al., arXiv 2602.08024, ICLR 2026): DySeg, then ADTS selection + TSTM tree merging per segment."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..types import Pruned, VideoTokens
from .registry import register
from .common import check_retention, exact_count, finish, frame_budgets, no_options, saliency_of

DEFAULTS = {"alpha": 0.7, "temporal_threshold": 0.8, "segment_threshold": 0.9, "min_segments": 8,
            "selection": "attn_div_v2", "do_segment": True, "expansion": 1.0, "budget": "exact"}
SELECTIONS = ("attn_div_v2", "attn_div")
BUDGETS = ("exact", "release")


def segments(g: Tensor, tau: float, c: int) -> list[int]:
    """DySeg on frame descriptors g (T, D): cut where consecutive cosine < tau, then at the lowest other
    boundaries until there are c segments (ties: earlier boundary)."""
    T = g.shape[0]
    g = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    sim = (g[:-1] * g[1:]).sum(dim=-1)
    cut = sim < tau
    need = min(c - 1 - int(cut.sum()), T - 1 - int(cut.sum()))
    if need > 0:
        cut[torch.argsort(sim.masked_fill(cut, float("inf")), stable=True)[:need]] = True
    bounds = [0, *(cut.nonzero().flatten() + 1).tolist(), T]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:])]


def dpc(x: Tensor, n: int, k: int) -> tuple[Tensor, Tensor]:
    """The release's DPC-kNN on one frame's points x (m, D) float: centres (n,) and each point's centre (m,).
    Distances by torch.cdist / sqrt(D) as the release (its numerics depend on m, hence one call per frame);
    density exp(-mean d^2 over the k nearest, self included); no random tie-break noise."""
    d = torch.cdist(x, x) / math.sqrt(x.shape[1])
    rho = torch.mean(-(torch.topk(d, k, dim=-1, largest=False).values ** 2), dim=-1).exp()
    delta = torch.where(rho[None, :] > rho[:, None], d, d.max()).min(dim=-1).values
    centres = torch.topk(delta * rho, n).indices
    member = d[:, centres].argmin(dim=-1)
    member[centres] = torch.arange(n, device=x.device)
    return centres, member


@register("flashvid")
class FlashVID:
    """FlashVID's vision-side compression: DySeg, then per segment ADTS (diverse salient tokens) and TSTM
    (spatiotemporal redundancy trees, then per-frame DPC-kNN merging).

    1. DySeg on each frame's mean token: cut where consecutive cosine < segment_threshold, then at the lowest
       remaining boundaries until there are min_segments segments.
    2. Per frame budget b (below); ADTS keeps a = ceil(b alpha) tokens by greedy max-min diversity: cosine
       distances 1 - cos(i, j) scaled per candidate j by its saliency (x 1e6) and, for "attn_div_v2", by its
       event relevance x_j . (the segment's mean token); the first pick maximises its distance to its nearest
       neighbour, each next one its distance to the nearest pick. Kept unmerged.
    3. TSTM: every other token of a segment's frame t > its first joins its most cosine-similar other token of
       frame t-1 when that similarity exceeds temporal_threshold (the threshold is lowered per segment so that at
       least sum(b) tokens, ADTS included, stay roots). A root carries (sum of its tree) / (1 + its direct
       children), exactly the release's in-place backward accumulation (the mean only for depth-one trees).
    4. The segment's c = b - a context tokens per frame are shared among its frames in proportion to their roots;
       each frame DPC-kNN clusters its roots (k = min(#clusters, 7)) and a cluster becomes the plain mean of its
       roots' features, placed at its centre. ``assignment`` follows trees to roots, roots to clusters.

    Source: the authors' release github.com/Fanziyang-v/FlashVID (flashvid/utils.py: flashvid_compression,
    segment, spatiotemporal_compression, dpc_knn; flashvid/token_selection.py: attn_div[_v2]) and arXiv 2602.08024.
    Parameters (defaults: the release's flashvid() and scripts/llava_ov.sh): retention=0.1; alpha=0.7 (ADTS
    share); temporal_threshold=0.8; segment_threshold=0.9; min_segments=8 (min_segment_num; qwen2_5_vl.sh uses
    4); selection="attn_div_v2" (ADTS v2; qwen2_5_vl.sh uses "attn_div"); do_segment=True; expansion=1.0;
    budget="exact". Saliency: the given one (the release uses SigLIP's last-layer attention averaged over heads
    and queries) or the feature-only fallback, reported in ``info["saliency"]``.

    Departures: (1) budget="exact" (default) keeps exactly round(r T L): frame budgets b_t from the exact total
    and the context share by largest remainders; budget="release" keeps the release's count, b = ceil(r L
    expansion) in every frame and ceil(m_i c n / M) clusters per frame (up to ~2 per frame over r T L).
    (2) expansion=1.0: the release's scripts use 1.25 on the vision side and then prune inside the LLM (FastV at
    layer 20 to 30%), so that r is an average over layers; a pre-LLM pruner has no second stage, so r here is the
    share that reaches the LLM (expansion=1.25 reproduces the release's vision-side count). (3) A one-frame
    segment clusters only its non-ADTS tokens (the release clusters all of them, so a centre can repeat an ADTS
    token). (4) "attn_div_v2" never re-picks a chosen token (the release can, when relevance is negative); no
    1e-6 density noise; DySeg and ADTS ties go to the lower index. (5) float32 math whatever the input dtype; frame_features
    are not used (the release segments on mean tokens). In budget="release" mode our kept indices and features
    equal the release's on its own function (tests/test_method_flashvid.py).
    """

    exact_budget = True

    def __init__(self, retention: float = 0.1, **opts) -> None:
        no_options("flashvid", opts, DEFAULTS)
        self.retention = check_retention(retention)
        o = {**DEFAULTS, **opts}
        self.alpha, self.temporal_threshold = float(o["alpha"]), float(o["temporal_threshold"])
        self.segment_threshold, self.min_segments = float(o["segment_threshold"]), int(o["min_segments"])
        self.selection, self.do_segment, self.budget = o["selection"], bool(o["do_segment"]), o["budget"]
        self.expansion = float(o["expansion"])
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha (ADTS share of each frame's budget) must be in [0, 1], got {self.alpha}")
        if not -1.0 <= self.temporal_threshold < 1.0:
            raise ValueError(f"temporal_threshold must be in [-1, 1) (at 1 the release keeps no context tokens), "
                             f"got {self.temporal_threshold}")
        if self.min_segments < 1 or self.expansion <= 0:
            raise ValueError(f"need min_segments >= 1 and expansion > 0, got {self.min_segments}, {self.expansion}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.budget not in BUDGETS:
            raise ValueError(f"budget must be one of {BUDGETS}, got {self.budget!r}")
        self.exact_budget = self.budget == "exact" and self.expansion == 1.0  # the instance says what it keeps

    def __call__(self, vt: VideoTokens) -> Pruned:
        T, L, D = vt.features.shape
        dev = vt.features.device
        sal, source = saliency_of(vt)
        xf = vt.features.float()
        sizes = segments(xf.mean(dim=1), self.segment_threshold, self.min_segments) if self.do_segment else [T]
        seg_of = torch.repeat_interleave(torch.arange(len(sizes), device=dev), torch.tensor(sizes, device=dev))
        r = min(1.0, self.retention * self.expansion)
        if self.budget == "release":
            b = [min(L, math.ceil(L * self.retention * self.expansion))] * T
        else:
            b = frame_budgets(exact_count(r, T * L), T).tolist()
        a = [math.ceil(n * self.alpha) for n in b]
        xn = xf / xf.norm(dim=-1, keepdim=True).clamp_min(1e-12)

        picked = self._adts(xf, xn, sal, seg_of, len(sizes), a)  # (T, L) bool
        merge_to, roots = self._trees(xn, picked, sizes, b)  # flat anchor of every token, root of every token
        N = T * L
        flat_picked = picked.flatten()
        direct = torch.bincount(merge_to[merge_to != torch.arange(N, device=dev)], minlength=N)
        tree_sum = torch.zeros(N, D, device=dev).index_add_(0, roots, xf.reshape(N, D))
        tree_size = torch.bincount(roots, minlength=N)
        is_root = (roots == torch.arange(N, device=dev)) & ~flat_picked

        rows, feats, merged = [flat_picked.nonzero().flatten()], [], []
        feats.append(xf.reshape(N, D)[rows[0]])
        merged.append(torch.zeros(rows[0].numel(), dtype=torch.bool, device=dev))
        owner = torch.full((N,), -1, dtype=torch.long, device=dev)
        owner[rows[0]] = torch.arange(rows[0].numel(), device=dev)
        next_row, start = rows[0].numel(), 0
        for n in sizes:  # context share of each segment, then one DPC per frame (see dpc: sizes differ)
            ctx = sum(b[start : start + n]) - sum(a[start : start + n])
            root_ids = [is_root[t * L : (t + 1) * L].nonzero().flatten() + t * L for t in range(start, start + n)]
            counts = self._clusters([int(i.numel()) for i in root_ids], ctx)
            for ids, c in zip(root_ids, counts):
                if ids.numel() == 0 or c == 0:
                    continue
                tam = tree_sum[ids] / (1.0 + direct[ids, None])
                if c >= ids.numel():  # keep every root as it is
                    keep, member, out = ids, torch.arange(ids.numel(), device=dev), tam
                    mrg = tree_size[ids] > 1
                else:
                    centres, member = dpc(tam, c, min(c, 7))
                    size = torch.bincount(member, minlength=c)
                    out = torch.zeros(c, D, device=dev).index_add_(0, member, tam) / size[:, None]
                    keep = ids[centres]
                    mrg = (size > 1) | (tree_size[keep] > 1)
                rows.append(keep)
                feats.append(out)
                merged.append(mrg)
                owner[ids] = next_row + member
                next_row += keep.numel()
            start += n
        # every non-ADTS token is represented by its root's row
        tail = ~flat_picked & (owner[roots] >= 0)
        owner[tail] = owner[roots[tail]]
        info = {"method": "flashvid", "saliency": source, "budget": self.budget, "segments": list(sizes),
                "adts_tokens": int(flat_picked.sum()), "roots": int(is_root.sum())}
        return finish(vt, torch.cat(rows), features=torch.cat(feats), merged=torch.cat(merged), assignment=owner,
                      segments=list(sizes), info=info)

    def _adts(self, xf: Tensor, xn: Tensor, sal: Tensor, seg_of: Tensor, S: int, a: list[int]) -> Tensor:
        """(T, L) mask of ADTS picks, a[t] in frame t; greedy max-min, batched over frames, one step per pick
        (each pick depends on the previous ones)."""
        T, L, _ = xf.shape
        dev = xf.device
        picked = torch.zeros(T, L, dtype=torch.bool, device=dev)
        steps = max(a)
        if steps == 0:
            return picked
        dist = (1.0 - torch.bmm(xn, xn.transpose(1, 2))) * (sal.float() * 1e6)[:, None, :]
        if self.selection == "attn_div_v2":  # relevance to the segment's mean of frame means
            pooled = xf.mean(dim=1)
            seg_mean = torch.zeros(S, pooled.shape[1], device=dev).index_add_(0, seg_of, pooled)
            seg_mean /= torch.bincount(seg_of, minlength=S)[:, None]
            dist = dist * torch.einsum("tld,td->tl", xf, seg_mean[seg_of])[:, None, :]
        frames = torch.arange(T, device=dev)
        first = torch.topk(dist, min(2, L), dim=1, largest=False).values[:, -1, :].argmax(dim=-1)
        nearest = dist[frames, first]  # distance of every candidate to its nearest pick so far
        want = torch.tensor(a, device=dev)
        picked[frames[want > 0], first[want > 0]] = True
        for i in range(1, steps):
            nxt = nearest.masked_fill(picked, float("-inf")).argmax(dim=-1)
            go = want > i
            picked[frames[go], nxt[go]] = True
            nearest = torch.minimum(nearest, dist[frames, nxt])
        return picked

    def _trees(self, xn: Tensor, picked: Tensor, sizes: list[int], b: list[int]) -> tuple[Tensor, Tensor]:
        """TSTM's edges: each token's anchor in the previous frame (itself when it stays a root) and its root."""
        T, L, _ = xn.shape
        dev = xn.device
        N = T * L
        best = torch.full((T, L), -1.0, device=dev)
        arg = torch.zeros(T, L, dtype=torch.long, device=dev)
        if T > 1:
            sim = torch.bmm(xn[1:], xn[:-1].transpose(1, 2))
            sim.masked_fill_(picked[1:, :, None] | picked[:-1, None, :], -1.0)
            best[1:], arg[1:] = sim.max(dim=-1)
        first = torch.tensor([0, *sizes[:-1]], device=dev).cumsum(0)
        best[first] = -1.0  # no edge into the previous segment
        merge = best > self.temporal_threshold
        start = 0
        for n in sizes:  # the lower bound on roots is per segment
            seg = slice(start, start + n)
            bound = sum(b[seg])
            if n > 1 and int((~merge[seg]).sum()) < bound:
                k = n * L - bound
                if k <= 0:
                    merge[seg] = False
                else:
                    soft = max(float(torch.topk(best[seg].flatten(), k).values[-1]), -1.0 + 1e-6)
                    merge[seg] = best[seg] > soft
            start += n
        ids = torch.arange(N, device=dev)
        anchor = (torch.arange(T, device=dev)[:, None] - 1) * L + arg
        merge_to = torch.where(merge.flatten(), anchor.flatten(), ids)
        roots = merge_to.clone()
        while True:  # pointer jumping: log2(depth) passes
            nxt = roots[roots]
            if torch.equal(nxt, roots):
                return merge_to, roots
            roots = nxt

    def _clusters(self, m: list[int], ctx: int) -> list[int]:
        """Clusters per frame for a segment with roots m and ctx context tokens."""
        M = sum(m)
        if ctx <= 0 or M == 0:
            return [0] * len(m)
        if self.budget == "release":
            ratio = ctx / M
            return [math.ceil(x * ratio) if ratio < 1.0 else x for x in m]
        if ctx >= M:
            return list(m)
        base = [x * ctx // M for x in m]
        rem = sorted(range(len(m)), key=lambda i: (-(m[i] * ctx % M), i))[: ctx - sum(base)]
        for i in rem:
            base[i] += 1
        return base
