"""What every backend receives and returns: the round plan, the picks, the accumulator seam."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..scores import ScoreSpec

__all__ = ["RoundPlan", "Picks", "RoundAccumulator", "STRATEGIES", "REGION_STRATEGIES"]

#: strategy -> (selection scope, class balanced)
STRATEGIES = {
    "image": ("image", False),
    "ra": ("per_image", False),
    "da": ("global", False),
    "cbra": ("per_image", True),
    "cbda": ("global", True),
}
REGION_STRATEGIES = ("ra", "da", "cbra", "cbda")


@dataclass(frozen=True)
class RoundPlan:
    """Everything a backend needs to run one acquisition round.

    Attributes:
        strategy: one of STRATEGIES.
        spec: the heuristic (ignored when scores are given).
        radius: selection radius r (a pick labels its (2r+1)² window).
        image_size: (H, W) of the label grid.
        per_image: picks per image (``ra``/``cbra``), else None.
        total: picks in the round (``da``/``cbda``: K = N·m; ``image``: images), else None.
        class_weights: (C,) float32 CPU weights applied as ``score · w[label]``, or None.
    """

    strategy: str
    spec: ScoreSpec
    radius: int
    image_size: tuple[int, int]
    per_image: int | None
    total: int | None
    class_weights: torch.Tensor | None = None

    @property
    def scope(self) -> str:
        return STRATEGIES[self.strategy][0]


@dataclass
class Picks:
    """Raw picks of a round in DESIGN §1's order (int64/float32 CPU tensors, length K).

    ``ys``/``xs`` are -1 for whole-image picks. ``predicted_counts`` is the (C,) int64
    pseudo-label histogram over every scored pixel, or None.
    """

    image_ids: torch.Tensor
    ys: torch.Tensor
    xs: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    predicted_counts: torch.Tensor | None = None

    @staticmethod
    def empty() -> "Picks":
        e = torch.empty(0, dtype=torch.int64)
        return Picks(e, e.clone(), e.clone(), torch.empty(0, dtype=torch.float32), e.clone())


class RoundAccumulator:
    """Consumes the batches of one round and returns its picks.

    ``add`` is called once per batch with already validated inputs: ``image_ids`` (B,)
    int64 CPU, distinct across the round; ``prior`` the earlier picks of these images
    (``cbda.state.PriorPicks``); then either ``logits`` (B, C, h, w) or ``scores`` (B, H, W)
    float32 with ``labels`` (B, H, W) int64 (labels may be None when no class weights apply).
    """

    def add(self, image_ids, prior, logits=None, scores=None, labels=None) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def finish(self) -> Picks:  # pragma: no cover - interface
        raise NotImplementedError
