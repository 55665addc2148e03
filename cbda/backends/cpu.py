"""The ``cpu`` backend: C++/OpenMP kernels (cbda._cpu) on CPU tensors.

Selection runs the exact per-image greedy in C++ (partial sort of the prefix it needs). For
``da``/``cbda`` the per-image sequences are merged into a candidate buffer that is trimmed
back to exactly K whenever it passes 2K, raising a cut-off that later images' candidates
must beat — memory O(K + one batch), exact in one pass.
"""

from __future__ import annotations

import torch

from .. import _native
from ..reference import image_ranking, reference_score
from ..reference.select import sort_picks
from .base import Picks, RoundAccumulator, RoundPlan
from .reference import weighted

NAME = "cpu"


def not_supported_reasons(device: torch.device, dtype: torch.dtype) -> list[str]:
    reasons = []
    if _native.load("_cpu") is None:
        reasons.append(f"cbda._cpu {_native.load_error('_cpu')}")
    if device.type != "cpu":
        reasons.append(f"tensors are on {device.type}, the cpu backend needs CPU tensors")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        reasons.append(f"dtype {dtype} not in float32/bfloat16/float16")
    return reasons


def score(logits, spec, image_ids):
    return reference_score(logits, spec, image_ids)


def max_picks_per_image(h: int, w: int, radius: int) -> int:
    """Centres pairwise more than 2r apart (Chebyshev): at most ceil(H/(2r+1))·ceil(W/(2r+1))."""
    k = 2 * radius + 1
    return -(-h // k) * -(-w // k)


def greedy_batch(
    scores: torch.Tensor, image_ids: torch.Tensor, prior, radius: int, quota: int,
    cutoff: tuple[float, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the C++ greedy on a batch of float32 score maps.

    Args:
        scores: (B, H, W) float32 CPU (weighted). image_ids: (B,) int64.
        prior: cbda.state.PriorPicks for these images.
        quota: picks per image at most.
        cutoff: (score, global index) that candidates must beat, or None.
    Returns:
        (b, y, x) int64 of all picks, per image in greedy order.
    """
    mod = _native.load("_cpu")
    b, h, w = scores.shape
    if h * w >= 2**32:
        raise ValueError("image_size: H*W must be below 2^32 for the cpu backend")
    quota = max(0, min(int(quota), max_picks_per_image(h, w, radius)))
    scores = scores.to(torch.float32).contiguous()
    ids = image_ids.to(torch.int64).contiguous()
    offsets = prior.offsets.to(torch.int64).contiguous()
    pys = prior.ys.to(torch.int64).contiguous()
    pxs = prior.xs.to(torch.int64).contiguous()
    prad = prior.radii.to(torch.int64).contiguous()
    whole = prior.whole_image.to(torch.uint8).contiguous()
    out_pix = torch.empty((b, max(quota, 1)), dtype=torch.int64)
    out_count = torch.zeros(b, dtype=torch.int64)
    cs, cg = cutoff if cutoff is not None else (0.0, 0)
    mod.greedy_select(
        scores.data_ptr(), ids.data_ptr(), b, h, w, radius,
        offsets.data_ptr(), pys.data_ptr(), pxs.data_ptr(), prad.data_ptr(), whole.data_ptr(),
        quota, cutoff is not None, float(cs), int(cg), out_pix.data_ptr(), out_count.data_ptr(),
    )
    mask = torch.arange(out_pix.shape[1]).unsqueeze(0) < out_count.unsqueeze(1)
    bi = torch.arange(b).unsqueeze(1).expand_as(out_pix)[mask]
    pix = out_pix[mask]
    return bi, pix // w, pix % w


class CpuRound(RoundAccumulator):
    def __init__(self, plan: RoundPlan):
        self.plan = plan
        self.parts: list[Picks] = []
        self.buffer: Picks | None = None
        self.buffered = 0
        self.cutoff: tuple[float, int] | None = None
        self.counts: torch.Tensor | None = None
        self.means: list[torch.Tensor] = []
        self.ids: list[torch.Tensor] = []
        self.whole: list[torch.Tensor] = []

    def _score(self, image_ids, logits, scores, labels):
        if logits is not None:
            scores, labels = reference_score(logits, self.plan.spec, image_ids)
            hist = torch.bincount(labels.flatten(), minlength=logits.shape[1])
            self.counts = hist if self.counts is None else self.counts + hist
        return weighted(scores.to(torch.float32), labels, self.plan.class_weights), labels

    def add(self, image_ids, prior, logits=None, scores=None, labels=None):
        plan = self.plan
        scores, labels = self._score(image_ids, logits, scores, labels)
        if plan.scope == "image":
            self.means.append(scores.mean(dim=(1, 2)))
            self.ids.append(image_ids)
            self.whole.append(prior.whole_image)
            return
        h, w = plan.image_size
        quota = plan.per_image if plan.scope == "per_image" else plan.total
        bi, ys, xs = greedy_batch(scores, image_ids, prior, plan.radius, quota, self.cutoff)
        lab = labels[bi, ys, xs] if labels is not None else torch.zeros_like(ys)
        part = Picks(image_ids[bi], ys, xs, scores[bi, ys, xs], lab)
        if plan.scope == "per_image":
            self.parts.append(part)
            return
        self.parts.append(part)
        self.buffered += len(part.ys)
        if self.buffered > 2 * plan.total:
            self._trim()

    def _merged(self) -> Picks:
        parts = self.parts
        if not parts:
            return Picks.empty()
        return Picks(*(torch.cat([getattr(p, f) for p in parts]) for f in ("image_ids", "ys", "xs", "scores", "classes")))

    def _ordered(self, picks: Picks, limit: int | None) -> Picks:
        h, w = self.plan.image_size
        perm = sort_picks(picks.scores, picks.image_ids * (h * w) + picks.ys * w + picks.xs)
        if limit is not None:
            perm = perm[:limit]
        return Picks(picks.image_ids[perm], picks.ys[perm], picks.xs[perm], picks.scores[perm], picks.classes[perm])

    def _trim(self):
        """Select the buffer back to exactly K and raise the cut-off to the K-th key."""
        k = self.plan.total
        top = self._ordered(self._merged(), k)
        self.parts = [top]
        self.buffered = len(top.ys)
        if self.buffered >= k and k > 0:
            h, w = self.plan.image_size
            self.cutoff = (float(top.scores[-1]), int(top.image_ids[-1] * (h * w) + top.ys[-1] * w + top.xs[-1]))

    def finish(self) -> Picks:
        plan = self.plan
        if plan.scope == "image":
            if not self.ids:
                return Picks.empty()
            ids, means = torch.cat(self.ids), torch.cat(self.means)
            chosen = image_ranking(means, ids, plan.total, torch.cat(self.whole))
            lookup = dict(zip(ids.tolist(), means.tolist()))
            m1 = torch.full_like(chosen, -1)
            sc = torch.tensor([lookup[i] for i in chosen.tolist()], dtype=torch.float32)
            return Picks(chosen, m1, m1.clone(), sc, m1.clone(), self.counts)
        out = self._ordered(self._merged(), plan.total if plan.scope == "global" else None)
        out.predicted_counts = self.counts
        return out


def open_round(plan: RoundPlan) -> RoundAccumulator:
    return CpuRound(plan)
