"""``cbda.score``: per-pixel acquisition scores and pseudo labels of a batch."""

from __future__ import annotations

import torch

from ..scores import ScoreSpec
from . import dispatch
from .validate import check_heuristic, check_image_ids, check_int, check_logits, check_out_size, window_radius

__all__ = ["score"]


def score(
    logits: torch.Tensor,
    heuristic: str = "ripu",
    radius: int = 1,
    out_size: tuple[int, int] | None = None,
    backend: str = "auto",
    *,
    image_ids=None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score every pixel of a batch of logits (docs/semantics.md, Scores).

    Args:
        logits: (B, C, h, w) float32, bfloat16 or float16, finite, C >= 2.
        heuristic: one of ``cbda.HEURISTICS`` (``ripu`` = RIPU's region score A = P·U).
        radius: window radius r >= 0 of the ``ripu`` heuristic.
        out_size: (H, W) to upsample to (bilinear, align_corners=True, inside the kernel);
            None keeps (h, w).
        backend: ``auto``, ``reference``, ``cpu``, ``triton`` or ``cuda``.
        image_ids: (B,) int64 global ids (used by ``random``; default 0..B-1).
        seed: seed of the ``random`` heuristic.
    Returns:
        scores (B, H, W) float32 and pseudo labels (B, H, W) int64, on the logits' device.
    """
    check_logits(logits)
    out = check_out_size(out_size)
    r = window_radius(check_int("radius", radius, 0), out or tuple(logits.shape[-2:]))
    spec = ScoreSpec(check_heuristic(heuristic), r, out, check_int("seed", seed))
    ids = check_image_ids(image_ids, logits.shape[0])
    mod = dispatch.resolve(backend, logits.device, logits.dtype)
    if logits.shape[0] == 0:
        h, w = spec.out_size or tuple(logits.shape[-2:])
        return (
            torch.empty((0, h, w), dtype=torch.float32, device=logits.device),
            torch.empty((0, h, w), dtype=torch.int64, device=logits.device),
        )
    return mod.score(logits, spec, ids.to(logits.device))
