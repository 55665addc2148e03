"""The reference backend: materialise every score map of the round, stack, loop.

Slow and memory-hungry on purpose (O(N·H·W)): it is the spec in code and the baseline the
benchmarks beat.
"""

from __future__ import annotations

import torch

from ..reference import reference_score, select_regions
from .base import Picks, RoundAccumulator, RoundPlan, exact_means, image_picks

NAME = "reference"


def not_supported_reasons(device: torch.device, dtype: torch.dtype) -> list[str]:
    return []  # runs wherever torch runs


def score(logits, spec, image_ids):
    return reference_score(logits, spec, image_ids)


def weighted(scores: torch.Tensor, labels: torch.Tensor | None, weights: torch.Tensor | None) -> torch.Tensor:
    """Â = A · w[ŷ] (float32)."""
    if weights is None:
        return scores
    return scores * weights.to(scores.device)[labels]


class ReferenceRound(RoundAccumulator):
    def __init__(self, plan: RoundPlan):
        self.plan = plan
        self.ids: list[torch.Tensor] = []
        self.scores: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.blocked: list[torch.Tensor] = []
        self.whole: list[torch.Tensor] = []
        self.counts: torch.Tensor | None = None

    def add(self, image_ids, prior, logits=None, scores=None, labels=None):
        if logits is not None:
            scores, labels = reference_score(logits, self.plan.spec, image_ids.to(logits.device))
            c = logits.shape[1]
            hist = torch.bincount(labels.flatten().cpu(), minlength=c)
            self.counts = hist if self.counts is None else self.counts + hist
        scores = scores.to(torch.float32).cpu()
        labels = labels.cpu() if labels is not None else torch.zeros(scores.shape, dtype=torch.int64)
        self.ids.append(image_ids.cpu())
        self.scores.append(weighted(scores, labels, self.plan.class_weights))
        self.labels.append(labels)
        self.blocked.append(prior.blocked_masks(self.plan.image_size, self.plan.radius).cpu())
        self.whole.append(prior.whole_image.cpu())

    def finish(self) -> Picks:
        if not self.ids:
            return Picks.empty()
        ids = torch.cat(self.ids)
        scores = torch.cat(self.scores)
        labels = torch.cat(self.labels)
        plan = self.plan
        if plan.scope == "image":
            return image_picks([ids], [exact_means(scores)], self.whole, plan.total, self.counts)
        out = select_regions(
            scores, labels, ids, torch.cat(self.blocked), plan.radius,
            plan.per_image if plan.scope == "per_image" else None,
            plan.total if plan.scope == "global" else None,
        )
        return Picks(out["image_ids"], out["ys"], out["xs"], out["scores"], out["classes"], self.counts)


def open_round(plan: RoundPlan) -> RoundAccumulator:
    return ReferenceRound(plan)
