"""ActiveLabelState: the labelling record of an active-learning run.

The primary record is one row per pick (image, centre, round, radius, score, predicted class)
plus the labels received for its window. Everything dense (labelled masks, label maps,
blocked-centre maps) is derived on demand for one image or one batch, so memory grows with
the number of picks, never with N·H·W (RIPU keeps two full-resolution bool maps per image).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import CbdaError, InputError, StateError, StateFileError
from ..selection import Selection, max_num_images
from . import export as _export
from .prior import PriorPicks

__all__ = ["ActiveLabelState", "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "cbda.ActiveLabelState"
FORMAT_VERSION = 1
VOID = 255

# Fixed zip timestamps make to_bytes() a pure function of the state (byte-comparable).
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass
class _Round:
    """One recorded round; ``labels`` is None until received."""

    image_ids: np.ndarray  # (n,) int64
    ys: np.ndarray  # (n,) int64, -1 for whole images
    xs: np.ndarray  # (n,) int64
    scores: np.ndarray  # (n,) float32
    classes: np.ndarray  # (n,) int64
    radius: int
    unit: str  # "region" | "image"
    strategy: str
    class_weights: np.ndarray | None  # (C,) float32
    labels: np.ndarray | None = None  # (n, 2r+1, 2r+1) or (n, H, W) uint8
    counts: np.ndarray | None = None  # (C,) int64, derived from labels

    @property
    def n(self) -> int:
        return int(self.image_ids.shape[0])


@dataclass
class _Index:
    """All picks sorted by (image, y, x); whole-image picks (y = -1) sort first in an image."""

    img: np.ndarray
    ys: np.ndarray
    xs: np.ndarray
    radii: np.ndarray
    rpos: np.ndarray  # 0-based round position
    row: np.ndarray  # row inside that round
    reg_img: np.ndarray  # region picks only, same order
    reg_ys: np.ndarray
    reg_xs: np.ndarray
    reg_radii: np.ndarray
    whole_ids: np.ndarray  # sorted image ids labelled whole


def _to_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as e:  # noqa: BLE001 - anything unconvertible is bad input
        raise InputError(f"{name}: expected an array or tensor, got {type(x).__name__} ({e})") from None


def _int_vector(x, name: str, n: int | None = None) -> np.ndarray:
    a = _to_numpy(x, name)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"{name}: expected a 1-D integer tensor, got shape {a.shape} dtype {a.dtype}")
    if n is not None and a.shape[0] != n:
        raise InputError(f"{name}: expected {n} entries (one per pick), got {a.shape[0]}")
    if a.dtype == np.uint64 and a.size and a.max() > np.iinfo(np.int64).max:
        raise InputError(f"{name}: values exceed int64")
    return a.astype(np.int64, copy=True)


def _as_int(x, name: str, minimum: int | None = None) -> int:
    if isinstance(x, torch.Tensor) and x.numel() == 1 and not x.is_floating_point():
        x = int(x.item())
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise InputError(f"{name}: expected an int, got {type(x).__name__}")
    x = int(x)
    if minimum is not None and x < minimum:
        raise InputError(f"{name}: expected an int >= {minimum}, got {x}")
    return x


def _check_label_values(a: np.ndarray, num_classes: int, name: str) -> None:
    """Label values must be train ids in [0, C) or 255 (void)."""
    if not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"{name}: expected an integer array of train ids, got dtype {a.dtype}")
    if a.size == 0:
        return
    bad = (a < 0) | ((a >= num_classes) & (a != VOID))
    if bad.any():
        v = a[bad].flat[0]
        raise InputError(f"{name}: values must be train ids in [0, {num_classes}) or 255 (void), found {int(v)}")


def _window_axes(centres: np.ndarray, r: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(k, 2r+1) coordinates of each window along one axis, clamped, and their in-image mask."""
    c = centres[:, None] + np.arange(-r, r + 1, dtype=np.int64)[None, :]
    inside = (c >= 0) & (c < size)
    return np.clip(c, 0, size - 1), inside


def _expand_ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the integer ranges [lo_i, hi_i); also return the range id of each element."""
    counts = hi - lo
    total = int(counts.sum())
    owner = np.repeat(np.arange(lo.shape[0], dtype=np.int64), counts)
    starts = np.repeat(lo - (np.cumsum(counts) - counts), counts)
    return starts + np.arange(total, dtype=np.int64), owner


def _first_overlap(old, new, h: int, w: int):
    """First new region pick whose window meets another's, or None.

    ``old``/``new``: (img, ys, xs, radii) int64 arrays. Windows overlap iff the Chebyshev
    distance of the centres is <= r1 + r2. Centres are bucketed into cells of side
    2·max(r) so that only the 3×3 neighbouring cells can hold an overlapping centre; with
    non-overlapping windows a cell holds O(1) picks, so the check is O(P log P), not O(P²).
    Returns (index into new, index into concat(old, new)).
    """
    n_new = new[0].shape[0]
    if n_new == 0:
        return None
    img, ys, xs, rr = (np.concatenate([o, n]) for o, n in zip(old, new))
    side = max(2 * int(rr.max()), 1)
    ncy, ncx = h // side + 3, w // side + 3  # +3: a ±1 cell offset never wraps into a neighbour
    key = (img * ncy + ys // side + 1) * ncx + xs // side + 1
    order = np.argsort(key, kind="stable")
    skey = key[order]
    n_old = old[0].shape[0]
    # Queries in key order: searchsorted then walks the sorted keys monotonically (cache friendly).
    me = order[order >= n_old]
    for dy in (-1, 0, 1):
        # The three cells (cy+dy, cx-1..cx+1) have consecutive keys: one range per query.
        centre = key[me] + dy * ncx
        lo = np.searchsorted(skey, centre - 1, "left")
        hi = np.searchsorted(skey, centre + 1, "right")
        pos, owner = _expand_ranges(lo, hi)
        if pos.size == 0:
            continue
        i, j = me[owner], order[pos]
        hit = (i != j) & (np.maximum(np.abs(ys[i] - ys[j]), np.abs(xs[i] - xs[j])) <= rr[i] + rr[j])
        if hit.any():
            k = int(np.flatnonzero(hit)[0])
            return int(i[k] - n_old), int(j[k])
    return None


class ActiveLabelState:
    """Picks per round and the labels received for them.

    Args:
        image_size: (H, W) of the label grid, H, W >= 1.
        num_classes: C >= 2; labels are train ids in [0, C) or 255 (void).
        num_images: N, size of the target set, or None when unknown (then any id >= 0).

    A region pick at centre (y, x) of radius r labels the (2r+1)² window around it, clipped
    to the image; a whole-image pick (y = x = -1) labels the whole image. Windows of
    different picks never overlap (RIPU's rule), which ``record`` enforces.

    Every method either succeeds or raises (InputError / StateError) leaving the state as
    it was.
    """

    def __init__(self, image_size: tuple[int, int], num_classes: int, num_images: int | None = None):
        try:
            hw = tuple(image_size)
        except TypeError:
            raise InputError(f"image_size: expected (H, W), got {image_size!r}") from None
        if len(hw) != 2:
            raise InputError(f"image_size: expected (H, W), got {image_size!r}")
        h = _as_int(hw[0], "image_size", 1)
        w = _as_int(hw[1], "image_size", 1)
        self.image_size: tuple[int, int] = (h, w)
        self.num_classes: int = _as_int(num_classes, "num_classes", 2)
        if self.num_classes > VOID:
            raise InputError(f"num_classes: expected 2 <= C <= 255 (labels are uint8, 255 = void), got {num_classes}")
        self.num_images: int | None = None if num_images is None else _as_int(num_images, "num_images", 1)
        if self.num_images is not None and self.num_images > max_num_images(self.image_size):
            raise InputError(
                f"num_images: global pixel indices id·H·W + y·W + x must fit in int64, so at most "
                f"{max_num_images(self.image_size)} images of {h}x{w}, got {self.num_images}"
            )
        self._rounds: list[_Round] = []
        self._index: _Index | None = None

    # ------------------------------------------------------------------ basic queries

    @property
    def num_rounds(self) -> int:
        """Number of rounds recorded."""
        return len(self._rounds)

    @property
    def num_picks(self) -> int:
        """Number of picks over all rounds."""
        return sum(r.n for r in self._rounds)

    def _round(self, round_index, name: str = "round_index") -> _Round:
        i = _as_int(round_index, name)
        if not 1 <= i <= self.num_rounds:
            raise StateError(f"{name}: expected a recorded round in [1, {self.num_rounds}], got {i}")
        return self._rounds[i - 1]

    def _rounds_arg(self, round_index) -> list[tuple[int, _Round]]:
        if round_index is None:
            return list(enumerate(self._rounds, start=1))
        rd = self._round(round_index)
        return [(int(round_index), rd)]

    def picks(self, round_index: int | None = None) -> dict[str, torch.Tensor]:
        """Pick rows of one round (1-based) or of all rounds, in record order.

        Returns:
            dict of (P,) tensors: ``image_ids``, ``ys``, ``xs`` (-1 for whole images),
            ``rounds`` (1-based), ``radii`` int64; ``scores`` float32; ``classes`` int64.
        """
        sel = self._rounds_arg(round_index)

        def cat(f, dtype):
            parts = [f(i, r) for i, r in sel]
            return torch.from_numpy(np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype))

        return {
            "image_ids": cat(lambda i, r: r.image_ids, np.int64),
            "ys": cat(lambda i, r: r.ys, np.int64),
            "xs": cat(lambda i, r: r.xs, np.int64),
            "rounds": cat(lambda i, r: np.full(r.n, i, dtype=np.int64), np.int64),
            "radii": cat(lambda i, r: np.full(r.n, r.radius, dtype=np.int64), np.int64),
            "scores": cat(lambda i, r: r.scores, np.float32),
            "classes": cat(lambda i, r: r.classes, np.int64),
        }

    def selection(self, round_index: int) -> Selection:
        """The ``Selection`` recorded as round ``round_index`` (without predicted_counts)."""
        rd = self._round(round_index)
        t = torch.from_numpy
        return Selection(
            image_ids=t(rd.image_ids.copy()), ys=t(rd.ys.copy()), xs=t(rd.xs.copy()),
            scores=t(rd.scores.copy()), classes=t(rd.classes.copy()), radius=rd.radius,
            image_size=self.image_size, round_index=int(round_index), strategy=rd.strategy,
            class_weights=None if rd.class_weights is None else t(rd.class_weights.copy()),
        )

    def labels(self, round_index: int) -> np.ndarray | None:
        """Labels of a round: (n, 2r+1, 2r+1) or (n, H, W) uint8 (a copy), or None if pending."""
        rd = self._round(round_index)
        return None if rd.labels is None else rd.labels.copy()

    def round_unit(self, round_index: int) -> str:
        """``"region"`` or ``"image"`` (whole-image picks) for a recorded round."""
        return self._round(round_index).unit

    # ------------------------------------------------------------------ recording

    def _check_rows(self, image_ids, ys, xs, scores, classes, radius, unit, class_weights, name: str) -> _Round:
        h, w = self.image_size
        ids = _int_vector(image_ids, f"{name}.image_ids")
        n = ids.shape[0]
        ys = _int_vector(ys, f"{name}.ys", n)
        xs = _int_vector(xs, f"{name}.xs", n)
        cls = _int_vector(classes, f"{name}.classes", n)
        sc = _to_numpy(scores, f"{name}.scores")
        if sc.shape != (n,) or not (np.issubdtype(sc.dtype, np.floating) or np.issubdtype(sc.dtype, np.integer)):
            raise InputError(f"{name}.scores: expected a ({n},) float tensor, got shape {sc.shape} dtype {sc.dtype}")
        sc = sc.astype(np.float32, copy=True)
        radius = _as_int(radius, f"{name}.radius", 0)
        if unit not in ("region", "image"):
            raise InputError(f"{name}.unit: expected 'region' or 'image', got {unit!r}")
        if n and ids.min() < 0:
            raise InputError(f"{name}.image_ids: expected ids >= 0, got {int(ids.min())}")
        if n and self.num_images is not None and ids.max() >= self.num_images:
            raise InputError(
                f"{name}.image_ids: expected ids in [0, {self.num_images}) (num_images), got {int(ids.max())}"
            )
        if n and ids.max() >= max_num_images(self.image_size):
            raise InputError(
                f"{name}.image_ids: expected ids below {max_num_images(self.image_size)} (their global pixel "
                f"indices id·H·W + y·W + x must fit in int64), got {int(ids.max())}"
            )
        if unit == "image":
            if n and ((ys != -1).any() or (xs != -1).any()):
                raise InputError(f"{name}.ys/xs: whole-image picks (strategy 'image') must have y = x = -1")
        elif n:
            bad = (ys < 0) | (ys >= h) | (xs < 0) | (xs >= w)
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                raise InputError(
                    f"{name}.ys/xs: centres must lie in the {h}x{w} image, pick {k} is at "
                    f"({int(ys[k])}, {int(xs[k])})"
                )
        cw = None
        if class_weights is not None:
            cw = _to_numpy(class_weights, f"{name}.class_weights").astype(np.float32, copy=True)
            if cw.shape != (self.num_classes,):
                raise InputError(f"{name}.class_weights: expected shape ({self.num_classes},), got {cw.shape}")
        return _Round(ids, ys, xs, sc, cls, radius, unit, "", cw)

    def _check_overlap(self, rd: _Round, name: str) -> None:
        idx = self._get_index()
        if rd.n == 0:
            return
        h, w = self.image_size
        if rd.unit == "image":
            uniq, counts = np.unique(rd.image_ids, return_counts=True)
            if (counts > 1).any():
                raise InputError(f"{name}: image {int(uniq[counts > 1][0])} is picked whole more than once")
            hit = np.isin(rd.image_ids, idx.img)
            if hit.any():
                k = int(np.flatnonzero(hit)[0])
                raise InputError(
                    f"{name}: whole-image pick {k} (image {int(rd.image_ids[k])}) overlaps earlier picks in that image"
                )
            return
        hit = np.isin(rd.image_ids, idx.whole_ids)
        if hit.any():
            k = int(np.flatnonzero(hit)[0])
            raise InputError(f"{name}: pick {k} is in image {int(rd.image_ids[k])}, which was labelled whole earlier")
        new = (rd.image_ids, rd.ys, rd.xs, np.full(rd.n, rd.radius, dtype=np.int64))
        old = (idx.reg_img, idx.reg_ys, idx.reg_xs, idx.reg_radii)
        found = _first_overlap(old, new, h, w)
        if found is not None:
            k, j = found
            n_old = old[0].shape[0]
            if j < n_old:
                other = (
                    f"an earlier pick at ({int(idx.reg_ys[j])}, {int(idx.reg_xs[j])}) of radius "
                    f"{int(idx.reg_radii[j])}"
                )
            else:
                jj = j - n_old
                other = f"pick {jj} of the same round at ({int(rd.ys[jj])}, {int(rd.xs[jj])})"
            raise InputError(
                f"{name}: pick {k} (image {int(rd.image_ids[k])}, centre ({int(rd.ys[k])}, {int(rd.xs[k])}), "
                f"radius {rd.radius}) overlaps {other}; labelled windows must not overlap"
            )

    def record(self, selection: Selection) -> None:
        """Append ``selection`` as the next round (its labels pending).

        Requires ``selection.round_index == num_rounds + 1`` and ``selection.image_size ==
        image_size`` (StateError). Raises InputError for ids outside [0, num_images), centres
        outside the image (region rounds) or not -1 (image rounds), and windows overlapping an
        earlier pick or another pick of the same round. The state is unchanged on error.
        """
        if not isinstance(selection, Selection):
            raise InputError(f"selection: expected a cbda.Selection, got {type(selection).__name__}")
        if selection.round_index != self.num_rounds + 1:
            raise StateError(
                f"selection: round_index {selection.round_index} does not follow the {self.num_rounds} "
                f"recorded round(s); expected {self.num_rounds + 1}"
            )
        if tuple(selection.image_size) != self.image_size:
            raise StateError(
                f"selection: image_size {tuple(selection.image_size)} does not match the state's {self.image_size}"
            )
        rd = self._check_rows(
            selection.image_ids, selection.ys, selection.xs, selection.scores, selection.classes,
            selection.radius, selection.unit, selection.class_weights, "selection",
        )
        rd.strategy = str(selection.strategy)
        self._check_overlap(rd, "selection")
        if rd.n == 0:  # nothing to label: an empty round is never pending
            rd.labels = self._empty_labels(rd)
            rd.counts = np.zeros(self.num_classes, dtype=np.int64)
        self._rounds.append(rd)
        self._index = None

    def _label_shape(self, rd: _Round) -> tuple[int, int, int]:
        if rd.unit == "image":
            return (rd.n, *self.image_size)
        k = 2 * rd.radius + 1
        return (rd.n, k, k)

    def _empty_labels(self, rd: _Round) -> np.ndarray:
        return np.zeros(self._label_shape(rd), dtype=np.uint8)

    def _outside_mask(self, rd: _Round) -> np.ndarray | None:
        """(n, k, k) bool, True at window positions outside the image (region rounds)."""
        if rd.unit == "image":
            return None
        h, w = self.image_size
        _, iy = _window_axes(rd.ys, rd.radius, h)
        _, ix = _window_axes(rd.xs, rd.radius, w)
        return ~(iy[:, :, None] & ix[:, None, :])

    def _prepare_labels(self, rd: _Round, labels, name: str) -> np.ndarray:
        a = _to_numpy(labels, name)
        shape = self._label_shape(rd)
        if a.shape != shape:
            form = "(n, H, W) for whole-image picks" if rd.unit == "image" else "(n, 2r+1, 2r+1)"
            raise InputError(f"{name}: expected shape {shape} {form}, got {a.shape}")
        _check_label_values(a, self.num_classes, name)
        out = a.astype(np.uint8, copy=True)
        outside = self._outside_mask(rd)
        if outside is not None:
            out[outside] = VOID  # positions outside the image carry no label
        return out

    def set_labels(self, round_index: int, labels) -> None:
        """Set (or replace) the labels received for round ``round_index``.

        Args:
            labels: numpy array or tensor of any integer dtype; (n, 2r+1, 2r+1) for a region
                round (window of pick i centred at [i, r, r]; positions outside the image are
                ignored and stored as 255) or (n, H, W) for a whole-image round; n = picks of
                that round. Values: train ids in [0, C) or 255 (void).
        """
        rd = self._round(round_index)
        out = self._prepare_labels(rd, labels, "labels")
        counts = np.bincount(out[out < self.num_classes].ravel(), minlength=self.num_classes).astype(np.int64)
        rd.labels, rd.counts = out, counts  # assigned together, after every check

    def label_from_ground_truth(self, lookup, round_index: int | None = None) -> None:
        """Label a round (default: the last) from ground truth: simulated annotation.

        Args:
            lookup: callable ``lookup(image_id: int)`` returning the (H, W) train-id map of
                that image (numpy or tensor, integer, 255 = void); called once per image.
        """
        if round_index is None:
            if self.num_rounds == 0:
                raise StateError("round_index: no round recorded yet")
            round_index = self.num_rounds
        rd = self._round(round_index)
        if not callable(lookup):
            raise InputError(f"lookup: expected a callable image_id -> (H, W) train ids, got {type(lookup).__name__}")
        h, w = self.image_size
        out = self._empty_labels(rd)
        if rd.unit == "region" and rd.n:
            cy, _ = _window_axes(rd.ys, rd.radius, h)
            cx, _ = _window_axes(rd.xs, rd.radius, w)
        uniq, inverse = np.unique(rd.image_ids, return_inverse=True)
        for u, image_id in enumerate(uniq.tolist()):
            gt = _to_numpy(lookup(image_id), "lookup")
            if gt.shape != (h, w):
                raise InputError(f"lookup: expected an ({h}, {w}) train-id map for image {image_id}, got shape {gt.shape}")
            _check_label_values(gt, self.num_classes, f"lookup (image {image_id})")
            rows = np.flatnonzero(inverse == u)
            if rd.unit == "image":
                out[rows] = gt
            else:
                out[rows] = gt[cy[rows][:, :, None], cx[rows][:, None, :]]
        self.set_labels(round_index, out)  # clamped reads outside the image become 255 there

    def pending_rounds(self) -> list[int]:
        """1-based indices of rounds whose labels have not been received."""
        return [i for i, r in enumerate(self._rounds, start=1) if r.labels is None]

    def labels_pending(self, round_index: int | None = None) -> bool:
        """Whether round ``round_index`` (default: any round) still waits for labels."""
        if round_index is None:
            return bool(self.pending_rounds())
        return self._round(round_index).labels is None

    # ------------------------------------------------------------------ class statistics

    def class_counts(self, before_round: int | None = None) -> torch.Tensor:
        """(C,) int64 labelled in-image pixels per class over rounds < ``before_round``.

        Default: all rounds. Void (255) is not counted. This is ``L_c`` of the class weights
        (docs/semantics.md, Class weights: rounds < i for round i). Raises StateError if one of those rounds has
        labels pending.
        """
        limit = self.num_rounds + 1 if before_round is None else _as_int(before_round, "before_round", 1)
        total = np.zeros(self.num_classes, dtype=np.int64)
        for i, rd in enumerate(self._rounds[: max(limit - 1, 0)], start=1):
            if rd.counts is None:
                raise StateError(
                    f"class_counts: labels of round {i} are pending (set_labels or label_from_ground_truth first)"
                )
            total += rd.counts
        return torch.from_numpy(total)

    def class_histogram(self) -> torch.Tensor:
        """(C,) float64 share of each class among labelled non-void pixels (zeros if none)."""
        c = self.class_counts().to(torch.float64)
        s = c.sum()
        return c / s if s > 0 else c

    # ------------------------------------------------------------------ per-image views

    def _get_index(self) -> _Index:
        if self._index is None:
            parts = [
                (r.image_ids, r.ys, r.xs, np.full(r.n, r.radius, dtype=np.int64),
                 np.full(r.n, p, dtype=np.int64), np.arange(r.n, dtype=np.int64))
                for p, r in enumerate(self._rounds)
            ]
            if parts:
                cols = [np.concatenate(c) for c in zip(*parts)]
            else:
                cols = [np.zeros(0, dtype=np.int64) for _ in range(6)]
            img, ys, xs, rad, rpos, row = cols
            h, w = self.image_size
            if img.size == 0 or int(img.max()) < (2**62) // (h * w + 1):
                # one int64 key (whole-image picks first) sorts much faster than a 3-key lexsort
                order = np.argsort(img * (h * w + 1) + (ys * w + xs + 1) * (ys >= 0), kind="stable")
            else:
                order = np.lexsort((xs, ys, img))
            img, ys, xs, rad, rpos, row = (c[order] for c in (img, ys, xs, rad, rpos, row))
            reg = ys >= 0
            self._index = _Index(
                img, ys, xs, rad, rpos, row, img[reg], ys[reg], xs[reg], rad[reg], np.unique(img[~reg])
            )
        return self._index

    def _image_id(self, image_id, name: str = "image_id") -> int:
        i = _as_int(image_id, name, 0)
        if self.num_images is not None and i >= self.num_images:
            raise InputError(f"{name}: expected an id in [0, {self.num_images}) (num_images), got {i}")
        return i

    def _image_rows(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self._get_index()
        lo, hi = np.searchsorted(idx.img, [image_id, image_id + 1])
        return idx.rpos[lo:hi], idx.row[lo:hi]

    def _paint(self, image_id: int, out: np.ndarray, labels: bool) -> None:
        """Write each pick's window of ``image_id`` into ``out`` (True, or its labels)."""
        h, w = self.image_size
        rpos, rows = self._image_rows(image_id)
        for p in np.unique(rpos).tolist():
            rd = self._rounds[p]
            sel = rows[rpos == p]
            if labels and rd.labels is None:
                continue  # pending: unlabelled so far
            if rd.unit == "image":
                out[...] = rd.labels[sel[0]] if labels else True
                continue
            cy, iy = _window_axes(rd.ys[sel], rd.radius, h)
            cx, ix = _window_axes(rd.xs[sel], rd.radius, w)
            inside = iy[:, :, None] & ix[:, None, :]
            yy = np.broadcast_to(cy[:, :, None], inside.shape)[inside]
            xx = np.broadcast_to(cx[:, None, :], inside.shape)[inside]
            out[yy, xx] = rd.labels[sel][inside] if labels else True

    def labelled_mask(self, image_id: int) -> torch.Tensor:
        """(H, W) bool: pixels of ``image_id`` covered by a pick (labels received or not)."""
        i = self._image_id(image_id)
        out = np.zeros(self.image_size, dtype=bool)
        self._paint(i, out, labels=False)
        return torch.from_numpy(out)

    def label_map(self, image_id: int) -> np.ndarray:
        """(H, W) uint8 labels of ``image_id``: train ids, 255 where unlabelled, void or pending.

        The RIPU mask format (``export_masks`` writes exactly this).
        """
        i = self._image_id(image_id)
        out = np.full(self.image_size, VOID, dtype=np.uint8)
        self._paint(i, out, labels=True)
        return out

    def labelled_image_ids(self) -> torch.Tensor:
        """(M,) int64 sorted ids of images with at least one pick."""
        return torch.from_numpy(np.unique(self._get_index().img))

    def num_labelled_pixels(self) -> int:
        """In-image pixels covered by all picks (void included; windows never overlap)."""
        h, w = self.image_size
        total = 0
        for rd in self._rounds:
            if rd.unit == "image":
                total += rd.n * h * w
                continue
            r = rd.radius
            hy = np.minimum(rd.ys + r, h - 1) - np.maximum(rd.ys - r, 0) + 1
            hx = np.minimum(rd.xs + r, w - 1) - np.maximum(rd.xs - r, 0) + 1
            total += int((hy * hx).sum())
        return total

    # ------------------------------------------------------------------ blocked centres

    def prior_picks(self, image_ids) -> PriorPicks:
        """Earlier picks of a batch of images, as CSR arrays in the batch's order.

        Args:
            image_ids: (B,) integer tensor/array/list of image ids (any order, repeats allowed).
        Returns:
            ``PriorPicks`` on the device of ``image_ids`` (CPU for non-tensors): per image its
            region picks sorted by (y, x), and whether it was labelled whole.
        """
        ids = _int_vector(image_ids, "image_ids")
        if ids.size and ids.min() < 0:
            raise InputError(f"image_ids: expected ids >= 0, got {int(ids.min())}")
        if ids.size and self.num_images is not None and ids.max() >= self.num_images:
            raise InputError(f"image_ids: expected ids in [0, {self.num_images}) (num_images), got {int(ids.max())}")
        device = image_ids.device if isinstance(image_ids, torch.Tensor) else None
        idx = self._get_index()
        lo = np.searchsorted(idx.reg_img, ids, "left")
        hi = np.searchsorted(idx.reg_img, ids, "right")
        pos, _ = _expand_ranges(lo, hi)
        offsets = np.zeros(ids.shape[0] + 1, dtype=np.int64)
        np.cumsum(hi - lo, out=offsets[1:])
        whole = np.isin(ids, idx.whole_ids)
        t = torch.from_numpy
        prior = PriorPicks(t(offsets), t(idx.reg_ys[pos]), t(idx.reg_xs[pos]), t(idx.reg_radii[pos]), t(whole))
        return prior if device is None or device.type == "cpu" else prior.to(device)

    def blocked_mask(self, image_id: int, radius: int) -> torch.Tensor:
        """(H, W) bool: centres where a new pick of ``radius`` would overlap an earlier pick.

        True within Chebyshev distance ``r_prev + radius`` of each earlier region pick, and
        everywhere in an image labelled whole.
        """
        i = self._image_id(image_id)
        radius = _as_int(radius, "radius", 0)
        return self.prior_picks([i]).blocked_masks(self.image_size, radius)[0]

    # ------------------------------------------------------------------ persistence

    def to_bytes(self) -> bytes:
        """The whole state as bytes (a zip of a JSON header and .npy arrays); deterministic."""
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "image_size": list(self.image_size),
            "num_classes": self.num_classes,
            "num_images": self.num_images,
            "rounds": [],
        }
        arrays: list[tuple[str, np.ndarray]] = []
        for i, rd in enumerate(self._rounds, start=1):
            meta["rounds"].append({
                "radius": rd.radius, "unit": rd.unit, "strategy": rd.strategy, "num_picks": rd.n,
                "has_labels": rd.labels is not None, "has_class_weights": rd.class_weights is not None,
            })
            pre = f"round_{i:04d}/"
            for key in ("image_ids", "ys", "xs", "scores", "classes"):
                arrays.append((pre + key, getattr(rd, key)))
            if rd.class_weights is not None:
                arrays.append((pre + "class_weights", rd.class_weights))
            if rd.labels is not None:
                arrays.append((pre + "labels", rd.labels))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", allowZip64=True) as zf:
            def put(name: str, data: bytes):
                info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
                info.external_attr = 0o644 << 16
                zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)

            put("meta.json", json.dumps(meta, sort_keys=True).encode("utf-8"))
            for name, arr in arrays:
                b = io.BytesIO()
                np.lib.format.write_array(b, np.ascontiguousarray(arr), allow_pickle=False)
                put(name + ".npy", b.getvalue())
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, check_overlap: bool = True) -> "ActiveLabelState":
        """Inverse of ``to_bytes``; validates the content as ``record``/``set_labels`` do.

        ``check_overlap=False`` skips the window-overlap check (O(P log P), a few seconds at
        tens of millions of picks) for bytes this package wrote itself.

        Raises:
            InputError: ``data`` is not bytes.
            StateFileError: the bytes are corrupt, truncated, of another format or version,
                or their content is invalid; nothing else is touched.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InputError(f"data: expected bytes, got {type(data).__name__}")
        return cls._decode(bytes(data), check_overlap, "data", None)

    @classmethod
    def _decode(cls, data: bytes, check_overlap: bool, what: str, path: str | None) -> "ActiveLabelState":
        """``from_bytes`` with every failure as one StateFileError that names ``what``.

        The bytes come from outside (a file, a network), so anything the zip, zlib, JSON or
        npy readers raise on them means "not a usable state", not a bug here.
        """
        where = ""  # which part was being read, for the message
        try:
            zf = zipfile.ZipFile(io.BytesIO(data))
            where = "meta.json: "
            meta = json.loads(zf.read("meta.json").decode("utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
                found = meta.get("format") if isinstance(meta, dict) else None
                raise StateFileError(f"{what}: not a saved ActiveLabelState (format {found!r}, expected {FORMAT_NAME!r})", path)
            if meta.get("version") != FORMAT_VERSION:
                raise StateFileError(
                    f"{what}: format version {meta.get('version')!r} is not supported (expected {FORMAT_VERSION})", path
                )
            state = cls(tuple(meta["image_size"]), meta["num_classes"], meta["num_images"])
            rounds = [(rm["radius"], rm["unit"], rm["strategy"], int(rm["num_picks"]), bool(rm["has_labels"]),
                       bool(rm["has_class_weights"])) for rm in meta["rounds"]]

            def arr(name: str) -> np.ndarray:
                return np.lib.format.read_array(io.BytesIO(zf.read(name + ".npy")), allow_pickle=False)

            for i, (radius, unit, strategy, num_picks, has_labels, has_cw) in enumerate(rounds, start=1):
                where = f"round {i}: "
                pre = f"round_{i:04d}/"
                rd = state._check_rows(
                    arr(pre + "image_ids"), arr(pre + "ys"), arr(pre + "xs"), arr(pre + "scores"),
                    arr(pre + "classes"), radius, unit, arr(pre + "class_weights") if has_cw else None, "picks",
                )
                if rd.n != num_picks:
                    raise InputError(f"picks: the header says {num_picks} picks, the arrays hold {rd.n}")
                rd.strategy = str(strategy)
                state._rounds.append(rd)
                if has_labels:
                    state.set_labels(i, arr(pre + "labels"))
                elif rd.n == 0:
                    rd.labels, rd.counts = state._empty_labels(rd), np.zeros(state.num_classes, dtype=np.int64)
            where = ""
            state._index = None
            if check_overlap:
                state._check_no_overlap("picks")
            return state
        except StateFileError:
            raise
        except CbdaError as e:
            raise StateFileError(f"{what}: invalid saved state ({where}{e})", path) from None
        except Exception as e:  # noqa: BLE001 - see the docstring
            raise StateFileError(
                f"{what}: not a readable saved ActiveLabelState ({where}{type(e).__name__}: {e})", path
            ) from e

    def _check_no_overlap(self, name: str) -> None:
        """All rounds at once (one sort, not one per round): no two windows overlap."""
        idx = self._get_index()
        whole = idx.img[idx.ys < 0]
        if whole.size != idx.whole_ids.size or np.isin(idx.reg_img, idx.whole_ids).any():
            raise InputError(f"{name}: a whole-image pick shares its image with another pick")
        empty = np.zeros(0, dtype=np.int64)
        found = _first_overlap((empty,) * 4, (idx.reg_img, idx.reg_ys, idx.reg_xs, idx.reg_radii), *self.image_size)
        if found is not None:
            k = found[0]
            raise InputError(
                f"{name}: the pick at ({int(idx.reg_ys[k])}, {int(idx.reg_xs[k])}) of image {int(idx.reg_img[k])} "
                "overlaps another pick"
            )

    def save(self, path) -> None:
        """Write the state to one file at ``path``, atomically (write to a temporary, rename)."""
        _export.atomic_write(path, self.to_bytes())

    @classmethod
    def load(cls, path, check_overlap: bool = True) -> "ActiveLabelState":
        """Read a state written by ``save`` (see ``from_bytes``); the file is only read.

        Raises:
            StateFileError: the file is corrupt, truncated or not a cbda state; the message
                and ``.path`` name the file.
            OSError: the file cannot be opened (missing, a directory, no permission).
        """
        p = os.fspath(path)
        with open(p, "rb") as f:
            data = f.read()
        return cls._decode(data, check_overlap, f"state file {p}", p)

    # ------------------------------------------------------------------ exports

    def export_masks(self, out_dir, names=None, allow_pending: bool = False) -> list[str]:
        """Write one RIPU mask PNG per image with picks; return the written paths.

        Each is the (H, W) uint8 ``label_map`` (train ids, 255 = unlabelled or void) at
        ``<out_dir>/gtMask/train/<name>_gtFine_labelIds.png``. ``names``: callable
        ``image_id -> str``, or a sequence/mapping indexed by id (e.g.
        ``"aachen/aachen_000000_000019"``; subfolders are created); default ``f"{id:06d}"``.
        Raises StateError while labels are pending unless ``allow_pending``.
        """
        return _export.export_masks(self, out_dir, names, allow_pending)

    def export_regions(self, path, names=None) -> list[dict]:
        """Write the picks as JSON for annotation tools (atomically) and return the list.

        Each entry: ``{"image_id", "round", "center": [y, x], "radius", "box": [y0, x0, y1,
        x1]}`` (box inclusive and clipped; whole-image picks have centre [-1, -1] and the full
        box), plus ``"name"`` when ``names`` is given (as in ``export_masks``).
        """
        return _export.export_regions(self, path, names)

    def __repr__(self) -> str:
        pending = self.pending_rounds()
        return (
            f"ActiveLabelState(image_size={self.image_size}, num_classes={self.num_classes}, "
            f"num_images={self.num_images}, rounds={self.num_rounds}, picks={self.num_picks}, "
            f"labelled_pixels={self.num_labelled_pixels()}, images={int(self.labelled_image_ids().numel())}"
            + (f", pending={pending}" if pending else "")
            + ")"
        )
