"""Argument checks shared by the public entry points. Each error names the argument and
the expected form; nothing here mutates anything."""

from __future__ import annotations

import math
import torch

from ..backends.base import STRATEGIES
from ..errors import InputError
from ..balance import check_fraction
from ..scores import HEURISTICS
from ..selection import max_num_images

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_int(name: str, value, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (
        isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point()
    ):
        raise InputError(f"{name}: expected an integer, got {value!r}")
    v = int(value)
    if minimum is not None and v < minimum:
        raise InputError(f"{name}: expected an integer >= {minimum}, got {v}")
    return v


def check_budget(budget) -> float:
    return check_fraction("budget", budget)


def check_radius(radius, image_size: tuple[int, int] | None, regions: bool = True) -> int:
    """r >= 0, and for region picks once the image size is known, a (2r+1)² region that fits
    in the image: the quota counts every region as (2r+1)² pixels, so a window larger than
    the image would label far more or far less than the budget says (docs/semantics.md,
    "Budget"). Whole-image picks (``regions=False``) use r only as a window radius."""
    r = check_int("radius", radius, 0)
    if image_size is not None and regions:
        h, w = image_size
        if 2 * r + 1 > min(h, w):
            raise InputError(
                f"radius: a (2r+1)x(2r+1) region must fit in the {h}x{w} image, so r <= {(min(h, w) - 1) // 2}, got {r}"
            )
    return r


def window_radius(radius: int, image_size: tuple[int, int]) -> int:
    """The radius the score kernels get: windows are clipped to the image, so any r beyond
    max(H, W) - 1 gives the same statistics as max(H, W) - 1 (and kernels that size buffers
    by r must never see r = 10**18)."""
    return min(radius, max(image_size) - 1)


def check_state(state):
    """None or a ``cbda.ActiveLabelState``."""
    from ..state import ActiveLabelState

    if state is not None and not isinstance(state, ActiveLabelState):
        raise InputError(f"state: expected a cbda.ActiveLabelState or None, got {type(state).__name__} {state!r:.60}")
    return state


def check_num_images_fit(num_images: int, image_size: tuple[int, int]) -> None:
    """N images of H×W must have int64 global pixel indices: N·H·W <= 2^63."""
    if num_images > max_num_images(image_size):
        h, w = image_size
        raise InputError(
            f"num_images: global pixel indices id·H·W + y·W + x must fit in int64, so at most "
            f"{max_num_images(image_size)} images of {h}x{w}, got {num_images}"
        )


def check_id_range(ids: torch.Tensor, num_images: int | None, image_size: tuple[int, int] | None) -> None:
    """Ids index the target set: [0, N) when N is known, and always small enough that the
    global pixel index id·H·W + y·W + x fits in int64 (every backend's index type)."""
    if ids.numel() == 0:
        return
    top = int(ids.max())
    if num_images is not None and top >= num_images:
        raise InputError(
            f"image_ids: unknown image id {top}, expected ids in [0, {num_images}) (num_images, the size of the "
            "target set)"
        )
    if image_size is not None and top >= max_num_images(image_size):
        h, w = image_size
        raise InputError(
            f"image_ids: id {top} is too large for {h}x{w} images: the global pixel index id·H·W + y·W + x must "
            f"fit in int64, so ids must be below {max_num_images(image_size)}"
        )


def check_round_index(round_index, rounds: int) -> int:
    r = check_int("round_index", round_index)
    if not (1 <= r <= rounds):
        raise InputError(f"round_index: expected 1 <= round_index <= rounds={rounds}, got {r}")
    return r


def check_heuristic(heuristic) -> str:
    if heuristic not in HEURISTICS:
        raise InputError(f"heuristic: expected one of {', '.join(HEURISTICS)}, got {heuristic!r}")
    return heuristic


def check_strategy(strategy) -> str:
    if strategy not in STRATEGIES:
        raise InputError(f"strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    return strategy


def check_out_size(out_size) -> tuple[int, int] | None:
    if out_size is None:
        return None
    try:
        h, w = (int(v) for v in out_size)
    except (TypeError, ValueError):
        raise InputError(f"out_size: expected (H, W) of two positive integers, got {out_size!r}") from None
    if h < 1 or w < 1:
        raise InputError(f"out_size: expected (H, W) of two positive integers, got {out_size!r}")
    return h, w


def check_logits(logits, name: str = "logits", num_classes: int | None = None) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise InputError(f"{name}: expected a tensor (B, C, h, w), got {type(logits).__name__}")
    if logits.dim() != 4:
        raise InputError(f"{name}: expected 4 dimensions (B, C, h, w), got shape {tuple(logits.shape)}")
    if logits.dtype not in FLOAT_DTYPES:
        raise InputError(f"{name}: expected dtype float32, bfloat16 or float16, got {logits.dtype}")
    b, c, h, w = logits.shape
    if c < 2:
        raise InputError(f"{name}: expected C >= 2 classes in dimension 1, got shape {tuple(logits.shape)}")
    if num_classes is not None and c != num_classes:
        raise InputError(f"{name}: expected {num_classes} classes (dimension 1), got {c}")
    if h < 1 or w < 1:
        raise InputError(f"{name}: expected non-empty spatial size, got shape {tuple(logits.shape)}")
    # NaN/+inf are errors too, but every backend detects them while it reads the logits (a
    # flag its kernels set, read once per batch), not with an extra pass here; -inf is a
    # masked class (probability 0) and is accepted
    return logits


def check_image_ids(image_ids, batch: int, device=None) -> torch.Tensor:
    """(B,) int64 CPU tensor of distinct non-negative ids."""
    if image_ids is None:
        return torch.arange(batch, dtype=torch.int64)
    try:
        ids = torch.as_tensor(image_ids)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"image_ids: expected a sequence of {batch} integers, got {image_ids!r}") from None
    if ids.numel() == 0:
        ids = ids.to(torch.int64)  # [] arrives as float32
    if ids.is_floating_point() or ids.dtype == torch.bool or ids.is_complex():
        raise InputError(f"image_ids: expected integers, got dtype {ids.dtype}")
    ids = ids.reshape(-1).to(torch.int64).cpu()
    if ids.numel() != batch:
        raise InputError(f"image_ids: expected {batch} ids (one per image of the batch), got {ids.numel()}")
    if ids.numel() and int(ids.min()) < 0:
        raise InputError("image_ids: expected non-negative ids")
    if ids.numel() != torch.unique(ids).numel():
        raise InputError("image_ids: duplicate image ids in the batch")
    return ids


def check_scores(scores, labels, num_classes: int | None, need_labels: bool):
    """Precomputed ``scores`` (B, H, W) float and ``pseudo_labels`` (B, H, W) integer."""
    if not isinstance(scores, torch.Tensor):
        raise InputError(f"scores: expected a tensor (B, H, W), got {type(scores).__name__}")
    if scores.dim() != 3:
        raise InputError(f"scores: expected 3 dimensions (B, H, W), got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise InputError(f"scores: expected a floating dtype, got {scores.dtype}")
    if scores.numel() and not bool(torch.isfinite(scores).all()):
        raise InputError("scores: contains NaN or inf values")
    if labels is None:
        if need_labels:
            raise InputError("pseudo_labels: required with scores when class weights apply (strategy cbra/cbda)")
        return scores, None
    if not isinstance(labels, torch.Tensor):
        raise InputError(f"pseudo_labels: expected a tensor (B, H, W), got {type(labels).__name__}")
    if labels.shape != scores.shape:
        raise InputError(f"pseudo_labels: expected shape {tuple(scores.shape)} like scores, got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise InputError(f"pseudo_labels: expected an integer dtype, got {labels.dtype}")
    if labels.device != scores.device:
        raise InputError(f"pseudo_labels: expected device {scores.device} like scores, got {labels.device}")
    if labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        top = num_classes if num_classes is not None else None
        if lo < 0 or (top is not None and hi >= top):
            raise InputError(f"pseudo_labels: expected class indices in [0, {top if top else 'C'}), got values in [{lo}, {hi}]")
    return scores, labels.to(torch.int64)


def per_image_quota(height: int, width: int, budget: float, rounds: int, radius: int) -> int:
    """m = ceil(H·W · budget/R / (2r+1)²), RIPU's count of regions per image and round
    (rounded to 6 decimals first so that float noise cannot add a region)."""
    v = height * width * budget / rounds / (2 * radius + 1) ** 2
    return max(0, math.ceil(round(v, 6)))


def image_quota(num_images: int, budget: float, rounds: int) -> int:
    """Whole images per round for the ``image`` strategy: ceil(N · budget/R)."""
    return max(0, math.ceil(round(num_images * budget / rounds, 6)))
