"""RIPU's training losses (see ripu-protocol.md). Inputs are logits already upsampled to the
label size: (B, C, H, W) float; labels (B, H, W) int64 with 255 = void / unlabelled."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .data.labels import IGNORE_INDEX


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
    """Mean CE over labelled pixels; None when no pixel is labelled (the term is skipped, not 0,
    so a batch with no active labels adds nothing, as in RIPU)."""
    if not bool((labels != IGNORE_INDEX).any()):
        return None
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)


def boundary_mask(labels: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: labelled pixels whose 3x3 neighbourhood holds another label (void included,
    the image border not)."""
    lab = labels.float().unsqueeze(1)
    hi = F.max_pool2d(F.pad(lab, (1, 1, 1, 1), mode="replicate"), 3, 1)
    lo = -F.max_pool2d(F.pad(-lab, (1, 1, 1, 1), mode="replicate"), 3, 1)
    return ((hi != lo) & (lab != IGNORE_INDEX)).squeeze(1)


def local_consistency(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L1 between the softmax and its 3x3 mean (replicate padding), averaged over the classes and
    the ground-truth boundary pixels; 0 when there is no boundary. Smooths predictions where
    classes meet."""
    p = logits.float().softmax(1)
    mean = F.avg_pool2d(F.pad(p, (1, 1, 1, 1), mode="replicate"), 3, 1)
    mask = boundary_mask(labels).unsqueeze(1)
    if not bool(mask.any()):
        return logits.sum() * 0.0
    diff = (p - mean).abs() * mask
    return diff.sum() / (mask.sum() * p.shape[1])


def negative_learning(logits: torch.Tensor, threshold: float = 0.05) -> torch.Tensor:
    """Mean of -ln(1 - p_c + 1e-6) over all (pixel, class) pairs with p_c < threshold: pushes
    classes the model already rules out further down on unlabelled target pixels."""
    p = logits.float().softmax(1)
    neg = p < threshold
    if not bool(neg.any()):
        return logits.sum() * 0.0
    return -(torch.log(1 - p + 1e-6) * neg).sum() / neg.sum()
