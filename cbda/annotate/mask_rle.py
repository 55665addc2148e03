"""CVAT's mask RLE: alternating run lengths over a bounding box, background first.

A CVAT mask shape is a bool bitmap cropped to its box (left, top, width, height), read row
by row; the code lists the lengths of the alternating runs of False and True, starting with
False (a leading 0 when the box starts with True). The "CVAT for images 1.1" XML writes the
lengths as ``rle="a, b, c"`` with ``left``/``top``/``width``/``height`` attributes; the API
form (cvat-sdk's ``encode_mask``) appends the inclusive box ``[x1, y1, x2, y2]``.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError

__all__ = ["encode_cvat_rle", "decode_cvat_rle", "format_cvat_rle", "parse_cvat_rle"]


def encode_cvat_rle(bitmap) -> list[int]:
    """Run lengths of an (h, w) bool bitmap (the mask inside its box), starting with False."""
    b = np.asarray(bitmap)
    if b.ndim != 2 or b.size == 0:
        raise InputError(f"bitmap: expected a non-empty (h, w) array, got shape {b.shape}")
    flat = b.ravel() != 0
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.shape[0]]))
    lengths = np.diff(bounds)
    if flat[0]:
        lengths = np.concatenate(([0], lengths))
    return lengths.astype(np.int64).tolist()


def decode_cvat_rle(rle, width: int, height: int) -> np.ndarray:
    """(height, width) bool bitmap of a CVAT run-length list (inverse of ``encode_cvat_rle``).

    Raises InputError if a length is negative or the lengths do not add up to width·height.
    """
    try:
        lengths = np.asarray(rle, dtype=np.int64)
    except (TypeError, ValueError):
        raise InputError(f"rle: expected a list of run lengths, got {rle!r:.60}") from None
    if lengths.ndim != 1 or (lengths < 0).any():
        raise InputError("rle: expected a flat list of non-negative run lengths")
    if width < 1 or height < 1:
        raise InputError(f"rle: the box must be at least 1x1, got {width}x{height}")
    if int(lengths.sum()) != width * height:
        raise InputError(
            f"rle: the run lengths add up to {int(lengths.sum())} pixels, the {width}x{height} box has {width * height}"
        )
    values = (np.arange(lengths.shape[0]) % 2 == 1)
    return np.repeat(values, lengths).reshape(height, width)


def format_cvat_rle(lengths) -> str:
    """The XML attribute form: ``"3, 5, 2"``."""
    return ", ".join(str(int(v)) for v in lengths)


def parse_cvat_rle(text: str) -> list[int]:
    """Inverse of ``format_cvat_rle``; accepts any comma/space separation."""
    parts = [p for p in str(text).replace(",", " ").split() if p]
    try:
        return [int(float(p)) for p in parts]
    except ValueError:
        raise InputError(f"rle: expected comma-separated integers, got {str(text)[:60]!r}") from None
