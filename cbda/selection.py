"""The result of one acquisition round."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Selection", "max_num_images"]


def max_num_images(image_size: tuple[int, int]) -> int:
    """The most images N whose global pixel indices ``id·H·W + y·W + x`` (ids in [0, N))
    fit in int64, the index type of every backend: ``2^63 // (H·W)``."""
    h, w = image_size
    return 2**63 // (int(h) * int(w))


@dataclass
class Selection:
    """Picks of one acquisition round, in pick order.

    Order is ``(score desc, global pixel index asc)`` with the global index
    ``image_id * H * W + y * W + x`` (docs/semantics.md, "Order"); for the ``image`` strategy
    it is ``(mean score desc, image_id asc)`` and ``ys``/``xs`` are -1 (the whole image).

    Attributes:
        image_ids: (K,) int64, image of each pick.
        ys, xs: (K,) int64, centre of each picked window (-1 for whole images).
        scores: (K,) float32, the (class-weighted) score that ranked the pick.
        classes: (K,) int64, predicted class at the centre (-1 for whole images).
        radius: window radius r; each pick labels the (2r+1)^2 window, clipped.
        image_size: (H, W) of the label grid.
        round_index: 1-based round this selection belongs to.
        strategy: the strategy that produced it.
        class_weights: (C,) float32 weights applied, or None (w = 1).
        predicted_counts: (C,) int64 pseudo-label histogram over every scored pixel,
            or None when the backend did not compute it.
    """

    image_ids: torch.Tensor
    ys: torch.Tensor
    xs: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    radius: int
    image_size: tuple[int, int]
    round_index: int
    strategy: str
    class_weights: torch.Tensor | None = None
    predicted_counts: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.image_ids.numel())

    @property
    def unit(self) -> str:
        """``"image"`` when whole images were picked, else ``"region"``."""
        return "image" if self.strategy == "image" else "region"

    @property
    def global_indices(self) -> torch.Tensor:
        """(K,) int64 global pixel index of each pick's centre (whole images: its first pixel)."""
        h, w = self.image_size
        ys = self.ys.clamp(min=0)
        xs = self.xs.clamp(min=0)
        return self.image_ids * (h * w) + ys * w + xs

    def to_dict(self) -> dict:
        """Plain-Python form (lists), for JSON."""
        return {
            "round_index": self.round_index,
            "strategy": self.strategy,
            "radius": self.radius,
            "image_size": list(self.image_size),
            "image_ids": self.image_ids.tolist(),
            "ys": self.ys.tolist(),
            "xs": self.xs.tolist(),
            "scores": self.scores.tolist(),
            "classes": self.classes.tolist(),
        }
