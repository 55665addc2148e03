"""Evaluation: confusion matrix over a whole split, IoU per class, mIoU, minimum class IoU.

As in RIPU: the image goes through the network at the eval size, logits are upsampled
(bilinear, align_corners=True) directly to the native label size, the softmax is averaged with
that of the horizontally flipped image, and one confusion matrix accumulates over the split.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .data.labels import IGNORE_INDEX


def confusion_matrix(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64, rows = ground truth, columns = prediction; void (255) pixels skipped.
    pred, label: integer tensors of the same shape."""
    valid = (label != IGNORE_INDEX) & (label < num_classes)
    idx = label[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes).cpu()


def iou_from_confusion(conf: torch.Tensor | np.ndarray) -> np.ndarray:
    """(C,) float64 IoU per class; NaN where the class is neither present nor predicted."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    denom = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def summarize(conf, class_names) -> dict:
    """The "final" object of metrics.json: miou, per_class_iou {name: iou}, min_iou, min_class,
    class_pixels {name: ground-truth pixel count} (the class frequencies of the split).
    IoUs are in percent; absent classes (NaN) are left out of the mean and the minimum."""
    iou = iou_from_confusion(conf) * 100
    present = ~np.isnan(iou)
    miou = float(np.nanmean(iou)) if present.any() else math.nan
    min_i = int(np.nanargmin(iou)) if present.any() else -1
    return {
        "miou": miou,
        "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(class_names, iou)},
        "min_iou": float(iou[min_i]) if min_i >= 0 else math.nan,
        "min_class": class_names[min_i] if min_i >= 0 else None,
        "class_pixels": {n: int(v) for n, v in zip(class_names, np.asarray(conf).sum(1))},
    }


def predict_probs(model, images: torch.Tensor, out_size, flip: bool = True) -> torch.Tensor:
    """(B, C, H, W) float32 softmax at out_size, flip-averaged. images: normalised (B, 3, h, w)."""
    logits = model(images)
    probs = F.interpolate(logits.float(), size=out_size, mode="bilinear", align_corners=True).softmax(1)
    if flip:
        logits = model(images.flip(-1))
        flipped = F.interpolate(logits.float(), size=out_size, mode="bilinear", align_corners=True)
        probs = (probs + flipped.softmax(1).flip(-1)) / 2
    return probs


@torch.no_grad()
def evaluate(model, loader, num_classes: int, prepare, flip: bool = True, autocast=None,
             progress=None) -> torch.Tensor:
    """Confusion matrix (C, C) int64 of `model` over `loader` (batches of dicts with "image" and
    native-size "label"). prepare(images uint8) -> normalised device tensor. Restores train mode."""
    was_training = model.training
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for batch in (progress(loader) if progress else loader):
        images = prepare(batch["image"])
        label = batch["label"].to(images.device)
        with autocast() if autocast else _null():
            probs = predict_probs(model, images, tuple(label.shape[-2:]), flip)
        conf += confusion_matrix(probs.argmax(1), label, num_classes)
    model.train(was_training)
    return conf


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False
