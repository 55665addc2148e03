"""Class balancing: the class weights of CBDA (Eq. 1-3), goal distributions and the
imbalance score (Eq. 4)."""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import numpy as np
import torch

from .errors import InputError

__all__ = ["class_weights", "imbalance_score", "uniform_goal", "check_goal", "check_fraction"]


def uniform_goal(num_classes: int) -> torch.Tensor:
    """(C,) float64 uniform goal distribution 1/C."""
    return torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64)


def check_goal(goal, num_classes: int) -> torch.Tensor:
    """Validate a goal distribution and return it as (C,) float64 summing to 1."""
    if goal is None:
        return uniform_goal(num_classes)
    g = torch.as_tensor(goal, dtype=torch.float64).flatten().cpu()
    if g.numel() != num_classes:
        raise InputError(f"goal: expected {num_classes} entries (one per class), got {g.numel()}")
    if not torch.isfinite(g).all() or (g < 0).any() or g.sum() <= 0:
        raise InputError("goal: expected finite non-negative shares with a positive sum")
    return g / g.sum()


def check_fraction(name: str, value) -> float:
    """A number in (0, 1]: a real number or a one-element real tensor/array. Strings and bools are
    refused (``"0.05"`` and ``True`` would otherwise pass ``float()`` as 0.05 and 1.0)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if isinstance(value, torch.Tensor):
        ok = value.numel() == 1 and value.dtype != torch.bool and not value.is_complex()
    elif isinstance(value, np.ndarray):
        ok = value.size == 1 and value.dtype.kind in "iuf"
    if not ok:
        raise InputError(f"{name}: expected a number in (0, 1] (e.g. 0.05), got {type(value).__name__} {value!r}")
    v = float(value)
    if not (0.0 < v <= 1.0):
        raise InputError(f"{name}: expected a fraction in (0, 1], got {value!r}")
    return v


def class_weights(
    labelled_counts,
    num_pixels: int,
    budget: float,
    round_index: int,
    rounds: int,
    goal: Sequence[float] | torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """CBDA class weights for round ``round_index`` (Eq. 1-2).

    ``B_c = num_pixels · budget · g_c · round_index / rounds`` and
    ``w_c = max(1 - L_c / B_c, eps)``; a class with ``g_c = 0`` gets ``eps``.

    Args:
        labelled_counts: (C,) labelled pixels per ground-truth class gathered in rounds
            before ``round_index`` (void excluded); any numeric dtype.
        num_pixels: N·H·W of the whole target set.
        budget: total labelled fraction over all rounds, in (0, 1].
        round_index: 1-based round, in [1, rounds].
        rounds: number of rounds R ≥ 1.
        goal: (C,) goal distribution (normalised here), uniform if None.
        eps: floor of the weights.
    Returns:
        (C,) float32 weights in [eps, 1], on the CPU.
    """
    counts = torch.as_tensor(labelled_counts).flatten().cpu()
    if counts.numel() < 2:
        raise InputError(f"labelled_counts: expected one count per class (C >= 2), got {counts.numel()}")
    counts = counts.to(torch.float64)
    if not torch.isfinite(counts).all() or (counts < 0).any():
        raise InputError("labelled_counts: expected finite non-negative counts")
    if int(num_pixels) <= 0:
        raise InputError(f"num_pixels: expected N·H·W > 0, got {num_pixels!r}")
    b = check_fraction("budget", budget)
    rounds = int(rounds)
    if rounds < 1:
        raise InputError(f"rounds: expected an integer >= 1, got {rounds}")
    if not (1 <= int(round_index) <= rounds):
        raise InputError(f"round_index: expected 1 <= round_index <= rounds={rounds}, got {round_index}")
    if not (0.0 < float(eps) <= 1.0):
        raise InputError(f"eps: expected a value in (0, 1], got {eps!r}")
    g = check_goal(goal, counts.numel())
    targets = float(num_pixels) * b * g * (int(round_index) / rounds)
    ratio = torch.where(targets > 0, counts / targets.clamp(min=1e-300), torch.full_like(counts, math.inf))
    w = torch.clamp(1.0 - ratio, min=float(eps))
    return w.to(torch.float32)


def imbalance_score(class_histogram) -> float:
    """Imbalance of a labelled set, ``KL(Q || U) / ln C`` (Eq. 4).

    0 for a uniform histogram, 1 when every labelled pixel has one class.

    Args:
        class_histogram: (C,) counts or shares per class, C >= 2, not all zero.
    Returns:
        float in [0, 1].
    """
    h = torch.as_tensor(class_histogram).flatten().cpu().to(torch.float64)
    if h.numel() < 2:
        raise InputError(f"class_histogram: expected one entry per class (C >= 2), got {h.numel()}")
    if not torch.isfinite(h).all() or (h < 0).any():
        raise InputError("class_histogram: expected finite non-negative entries")
    total = h.sum()
    if total <= 0:
        raise InputError("class_histogram: all entries are zero, the imbalance is undefined")
    q = h / total
    c = h.numel()
    nz = q > 0
    kl = (q[nz] * torch.log(q[nz] * c)).sum()
    return float(kl / math.log(c))
