"""Reference scores: softmax, entropy, pseudo label, windowed impurity and uncertainty."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..scores import LOG_EPS, RIPU_PIXEL_RADIUS, ScoreSpec, random_scores

__all__ = ["upsample_logits", "window_mean", "reference_score"]


NONFINITE_MESSAGE = (
    "logits: contains NaN or +inf values, or a pixel whose every class is -inf "
    "(-inf alone is accepted: a masked class with probability 0)"
)


def upsample_logits(logits: torch.Tensor, out_size: tuple[int, int] | None) -> torch.Tensor:
    """(B, C, h, w) any float dtype -> (B, C, H, W) float32, bilinear, align_corners=True.

    -inf (a masked class) is interpolated as "-inf wherever a -inf tap has a positive
    weight": a tap of weight 0 contributes nothing (plain interpolation would compute
    0·-inf = NaN there). Finite inputs give exactly F.interpolate's result.
    """
    x = logits.to(torch.float32)
    if out_size is None or tuple(out_size) == tuple(x.shape[-2:]):
        return x
    size = tuple(out_size)
    neg = torch.isneginf(x)
    if not bool(neg.any()):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    fin = F.interpolate(torch.where(neg, 0.0, x), size=size, mode="bilinear", align_corners=True)
    hit = F.interpolate(neg.to(torch.float32), size=size, mode="bilinear", align_corners=True) > 0
    return torch.where(hit, float("-inf"), fin)


def check_finite_logits(logits: torch.Tensor, upsampled: torch.Tensor) -> None:
    """NaN/+inf anywhere in the logits, or a pixel whose every class is -inf, is an error
    (InputError); -inf alone is a masked class. The reference checks with full passes; the
    fused backends raise the same error from a flag their kernels set."""
    from ..errors import InputError

    if logits.numel() == 0:
        return
    if bool((torch.isnan(logits) | torch.isposinf(logits)).any()):
        raise InputError(NONFINITE_MESSAGE)
    if bool(torch.isneginf(upsampled).all(dim=1).any()):
        raise InputError(NONFINITE_MESSAGE)


def window_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over the (2r+1)² window clipped to the image: the window sum divided by the
    window's in-image pixel count (RIPU's zero padding). Sums come from float64 integral
    images, so any radius costs O(H·W).

    (B, K, H, W) float32 -> (B, K, H, W) float32.
    """
    if radius == 0:
        return x
    h, w = x.shape[-2:]
    dev = x.device
    ii = F.pad(x.to(torch.float64), (1, 0, 1, 0)).cumsum(-1).cumsum(-2)
    ys = torch.arange(h, device=dev)
    xs = torch.arange(w, device=dev)
    y0, y1 = (ys - radius).clamp(min=0), (ys + radius + 1).clamp(max=h)
    x0, x1 = (xs - radius).clamp(min=0), (xs + radius + 1).clamp(max=w)
    sums = (
        ii[..., y1[:, None], x1[None, :]]
        - ii[..., y0[:, None], x1[None, :]]
        - ii[..., y1[:, None], x0[None, :]]
        + ii[..., y0[:, None], x0[None, :]]
    )
    counts = (y1 - y0)[:, None] * (x1 - x0)[None, :]
    return (sums / counts).to(torch.float32)


def _impurity(labels: torch.Tensor, num_classes: int, radius: int) -> torch.Tensor:
    """P(x) = -Σ_c q_c ln(q_c + eps) / ln C over the window; (B, H, W) int64 -> float32."""
    onehot = F.one_hot(labels, num_classes).permute(0, 3, 1, 2).to(torch.float32)
    q = window_mean(onehot, radius)
    return -(q * torch.log(q + LOG_EPS)).sum(1) / math.log(num_classes)


def reference_score(
    logits: torch.Tensor,
    spec: ScoreSpec,
    image_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score every pixel of a batch (docs/semantics.md, Scores).

    Args:
        logits: (B, C, h, w) float32/bfloat16/float16.
        spec: heuristic, radius, out_size, seed.
        image_ids: (B,) int64, needed by ``random`` (defaults to 0..B-1).
    Returns:
        scores (B, H, W) float32 and pseudo labels (B, H, W) int64 (argmax of the
        upsampled logits, lowest class on ties).
    Raises:
        InputError: NaN or +inf logits, or a pixel whose every class is -inf. -inf is a
            masked class: probability exactly 0 (torch.softmax), contributing 0 to the entropy.
    """
    x = upsample_logits(logits, spec.out_size)
    check_finite_logits(logits, x)
    b, c, h, w = x.shape
    labels = x.argmax(1)
    if spec.heuristic == "random":
        ids = image_ids if image_ids is not None else torch.arange(b, device=x.device)
        return random_scores(ids.to(x.device), h, w, spec.seed), labels
    p = torch.softmax(x, dim=1)
    ent = -(p * torch.log(p + LOG_EPS)).sum(1)  # unnormalised pixel entropy
    ln_c = math.log(c)
    if spec.heuristic == "ripu":
        u = window_mean((ent / ln_c).unsqueeze(1), spec.radius).squeeze(1)
        scores = _impurity(labels, c, spec.radius) * u
    elif spec.heuristic == "ripu_pixel":
        scores = _impurity(labels, c, RIPU_PIXEL_RADIUS) * ent
    elif spec.heuristic == "entropy":
        scores = ent / ln_c
    elif spec.heuristic == "margin":
        top2 = p.topk(2, dim=1).values
        scores = 1.0 - (top2[:, 0] - top2[:, 1])
    elif spec.heuristic == "least_confidence":
        scores = 1.0 - p.max(1).values
    else:  # validated by the API; kept for direct callers
        raise ValueError(f"heuristic: unknown {spec.heuristic!r}")
    return scores.to(torch.float32).contiguous(), labels
