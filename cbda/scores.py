"""Acquisition heuristics: names, parameters and the pieces every backend shares.

The formulas are in docs/semantics.md (Scores); ``cbda.reference.scores`` is their executable form. The
counter-based hash for the seeded random heuristic lives here because every backend
(PyTorch, C++, Triton, CUDA) must reproduce it bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "HEURISTICS",
    "LOG_EPS",
    "RIPU_PIXEL_RADIUS",
    "ScoreSpec",
    "random_scores",
    "mix32",
]

#: epsilon inside every ``ln(p + eps)`` (RIPU's constant)
LOG_EPS = 1e-6
#: RIPU's pixel score uses a 65×65 impurity window
RIPU_PIXEL_RADIUS = 32

#: heuristic name -> one-line description
HEURISTICS = {
    "ripu": "RIPU region score: impurity × mean entropy over the (2r+1)² window (RA)",
    "ripu_pixel": "RIPU pixel score: 65×65 impurity × unnormalised pixel entropy",
    "entropy": "pixel entropy of the softmax, divided by ln C",
    "margin": "1 - (p_top1 - p_top2)",
    "least_confidence": "1 - p_top1",
    "random": "seeded counter-based uniform [0, 1) per global pixel index",
}


@dataclass(frozen=True)
class ScoreSpec:
    """What to score: the heuristic, its window radius, the output size and the seed.

    ``radius`` is the region radius r of docs/semantics.md (used by ``ripu``); ``out_size`` is
    ``(H, W)`` or None for the logits' own size.
    """

    heuristic: str = "ripu"
    radius: int = 1
    out_size: tuple[int, int] | None = None
    seed: int = 0

    @property
    def window_radius(self) -> int:
        """Radius of the window statistics this heuristic needs (0: none)."""
        if self.heuristic == "ripu":
            return self.radius
        if self.heuristic == "ripu_pixel":
            return RIPU_PIXEL_RADIUS
        return 0

    def log_classes(self, num_classes: int) -> float:
        return math.log(num_classes)


_M32 = 0xFFFFFFFF


def mix32(h: torch.Tensor) -> torch.Tensor:
    """The murmur3 32-bit finaliser on int64 tensors holding values in [0, 2^32).

    int64 multiplication wraps, but the low 32 bits of a wrapped product are exact, so
    masking after each product gives uint32 arithmetic; shifts act on non-negative values.
    """
    h = h & _M32
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    h = h ^ (h >> 16)
    return h


def random_scores(image_ids: torch.Tensor, height: int, width: int, seed: int) -> torch.Tensor:
    """Seeded uniform scores in [0, 1), a pure function of (seed, image id, pixel).

    ``h = mix32(pixel ^ mix32(id_lo ^ mix32(id_hi ^ mix32(seed))))`` with
    ``pixel = y * W + x`` and the image id split in 32-bit halves; the score is
    ``(h >> 8) / 2^24`` (exact in float32). Every backend implements this same chain.

    Args:
        image_ids: (B,) int64, non-negative.
    Returns:
        (B, H, W) float32 on the ids' device.
    """
    ids = image_ids.to(torch.int64).reshape(-1, 1, 1)
    s = mix32(torch.tensor(seed & _M32, dtype=torch.int64, device=ids.device))
    h = mix32((ids >> 32) ^ s)
    h = mix32((ids & _M32) ^ h)
    pix = torch.arange(height * width, dtype=torch.int64, device=ids.device).reshape(1, height, width)
    h = mix32(pix ^ h)
    return ((h >> 8).to(torch.float32)) * (1.0 / 16777216.0)
