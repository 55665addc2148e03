"""Pure-PyTorch reference: the executable spec of docs/semantics.md and the benchmark baseline.

It materialises full-resolution tensors and stacks whole rounds on purpose: it is meant to be
obviously correct, not fast. Every other backend is tested against it.
"""

from .scores import reference_score, upsample_logits, window_mean
from .select import greedy_argmax, image_ranking, select_regions

__all__ = [
    "reference_score",
    "upsample_logits",
    "window_mean",
    "greedy_argmax",
    "image_ranking",
    "select_regions",
]
