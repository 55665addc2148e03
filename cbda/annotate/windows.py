"""The picked windows of one round, per image: geometry, painting, and labels from maps.

Everything the exporters and importers share: which images a round asks about, the
clipped box of each pick, dense (H, W) maps of window values for one image, and the
conversion of per-image label maps (what an annotation tool returns) into the (n, k, k)
array ``ActiveLabelState.set_labels`` takes, with the count of windows left unlabelled.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError, StateError

__all__ = ["RoundWindows", "ImportReport", "VOID"]

VOID = 255


@dataclass
class ImportReport:
    """What an import found: per-round counts, and the problems that were tolerated."""

    round_index: int
    images: int = 0
    windows: int = 0
    unlabelled_windows: int = 0
    unlabelled_pixels: int = 0
    labelled_pixels: int = 0
    overlapping_pixels: int = 0
    unlabelled: list = field(default_factory=list)  # (image name, y, x) of the first few

    def summary(self) -> str:
        """One paragraph for the user."""
        s = (f"round {self.round_index}: {self.images} images, {self.windows} windows, "
             f"{self.labelled_pixels} labelled pixels")
        if self.unlabelled_windows:
            eg = ", ".join(f"{n} at ({y}, {x})" for n, y, x in self.unlabelled[:3])
            s += (f"; {self.unlabelled_windows} window{'s' if self.unlabelled_windows > 1 else ''} left unlabelled "
                  f"(e.g. {eg}): recorded as void (255)")
        if self.unlabelled_pixels:
            s += f"; {self.unlabelled_pixels} picked pixels without a label (void)"
        if self.overlapping_pixels:
            s += f"; {self.overlapping_pixels} pixels painted with two classes (the later region wins)"
        return s


class RoundWindows:
    """The picks of round ``round_index`` of ``state``, grouped by image.

    Attributes:
        image_ids: (M,) int64 sorted ids of the images with picks in this round.
        boxes: (n, 4) int64 inclusive clipped boxes ``y0, x0, y1, x1`` per pick (record order).
        unit: ``"region"`` or ``"image"``; radius; image_size (H, W); n picks.
    """

    def __init__(self, state, round_index: int):
        if not 1 <= int(round_index) <= state.num_rounds:
            raise StateError(f"round: expected a recorded round in [1, {state.num_rounds}], got {round_index}")
        sel = state.selection(int(round_index))
        self.round_index = int(round_index)
        self.image_size = tuple(state.image_size)
        self.num_classes = int(state.num_classes)
        self.unit = state.round_unit(int(round_index))
        self.radius = int(sel.radius)
        self.ids = sel.image_ids.numpy().astype(np.int64)
        self.ys = sel.ys.numpy().astype(np.int64)
        self.xs = sel.xs.numpy().astype(np.int64)
        self.classes = sel.classes.numpy().astype(np.int64)
        self.n = int(self.ids.shape[0])
        h, w = self.image_size
        r = self.radius
        if self.unit == "image":
            self.boxes = np.tile(np.array([0, 0, h - 1, w - 1], dtype=np.int64), (self.n, 1))
        else:
            self.boxes = np.stack([np.maximum(self.ys - r, 0), np.maximum(self.xs - r, 0),
                                   np.minimum(self.ys + r, h - 1), np.minimum(self.xs + r, w - 1)], axis=1)
        self.image_ids = np.unique(self.ids)
        order = np.argsort(self.ids, kind="stable")
        bounds = np.searchsorted(self.ids[order], self.image_ids)
        self._rows = dict(zip(self.image_ids.tolist(), np.split(order, bounds[1:])))

    @property
    def label_shape(self) -> tuple[int, int, int]:
        """Shape of the round's labels: (n, 2r+1, 2r+1) or (n, H, W) for whole images."""
        if self.unit == "image":
            return (self.n, *self.image_size)
        k = 2 * self.radius + 1
        return (self.n, k, k)

    def has_image(self, image_id) -> bool:
        """Whether ``image_id`` has picks in this round."""
        return isinstance(image_id, (int, np.integer)) and int(image_id) in self._rows

    def rows(self, image_id: int) -> np.ndarray:
        """Pick rows (indices into the round) of ``image_id``, in record order; empty if none."""
        return self._rows.get(int(image_id), np.zeros(0, dtype=np.int64))

    def window_mask(self, image_id: int) -> np.ndarray:
        """(H, W) bool: pixels of ``image_id`` inside this round's windows."""
        out = np.zeros(self.image_size, dtype=bool)
        for y0, x0, y1, x1 in self.boxes[self.rows(image_id)].tolist():
            out[y0:y1 + 1, x0:x1 + 1] = True
        return out

    def window_offsets(self, row: int) -> tuple[int, int]:
        """(dy, dx) of the box's corner inside the (k, k) window array of pick ``row``."""
        if self.unit == "image":
            return 0, 0
        return int(self.boxes[row, 0] - (self.ys[row] - self.radius)), int(self.boxes[row, 1] - (self.xs[row] - self.radius))

    def paint(self, image_id: int, window_values: np.ndarray) -> np.ndarray:
        """(H, W) uint8 map of ``image_id``: ``window_values`` (shaped like the round's labels)
        inside its windows, 255 elsewhere."""
        out = np.full(self.image_size, VOID, dtype=np.uint8)
        for row in self.rows(image_id).tolist():
            y0, x0, y1, x1 = self.boxes[row].tolist()
            dy, dx = self.window_offsets(row)
            out[y0:y1 + 1, x0:x1 + 1] = window_values[row][dy:dy + y1 - y0 + 1, dx:dx + x1 - x0 + 1]
        return out

    def centre_class_values(self) -> np.ndarray:
        """Window values filled with each pick's predicted class at its centre (the fallback
        pre-annotation when no per-pixel prediction was saved)."""
        vals = np.broadcast_to(self.classes.astype(np.uint8)[:, None, None], self.label_shape)
        return vals.copy()

    def check_window_values(self, values, name: str) -> np.ndarray:
        """Validate an array shaped like the round's labels (train ids or 255); uint8 copy."""
        a = np.asarray(values)
        if a.shape != self.label_shape:
            raise InputError(f"{name}: expected shape {self.label_shape} (one window per pick of round "
                             f"{self.round_index}), got {a.shape}")
        if not np.issubdtype(a.dtype, np.integer):
            raise InputError(f"{name}: expected integer train ids, got dtype {a.dtype}")
        bad = (a < 0) | ((a >= self.num_classes) & (a != VOID))
        if bad.any():
            raise InputError(f"{name}: values must be train ids in [0, {self.num_classes}) or 255, "
                             f"found {int(a[bad].flat[0])}")
        return a.astype(np.uint8)

    def labels_from_maps(self, maps: dict, names: dict) -> tuple[np.ndarray, ImportReport]:
        """The round's labels from per-image (H, W) uint8 label maps (255 = no label).

        Args:
            maps: image id -> (H, W) uint8 map; every image of the round must be present.
            names: image id -> name used in messages.
        Returns:
            (labels shaped like ``label_shape`` uint8, report). Windows whose in-image pixels
            carry no label are allowed (they become void) and counted in the report.
        """
        missing = [i for i in self.image_ids.tolist() if i not in maps]
        if missing:
            raise InputError(f"import: {len(missing)} image(s) of round {self.round_index} have no task/answer in "
                             f"the file, e.g. {names.get(missing[0], missing[0])} (id {missing[0]})")
        labels = np.full(self.label_shape, VOID, dtype=np.uint8)
        rep = ImportReport(self.round_index, images=int(self.image_ids.shape[0]), windows=self.n)
        for image_id in self.image_ids.tolist():
            m = maps[image_id]
            for row in self.rows(image_id).tolist():
                y0, x0, y1, x1 = self.boxes[row].tolist()
                dy, dx = self.window_offsets(row)
                win = m[y0:y1 + 1, x0:x1 + 1]
                labels[row, dy:dy + y1 - y0 + 1, dx:dx + x1 - x0 + 1] = win
                empty = int((win == VOID).sum())
                rep.labelled_pixels += win.size - empty
                if empty == win.size:
                    rep.unlabelled_windows += 1
                    if len(rep.unlabelled) < 10:
                        rep.unlabelled.append((names.get(image_id, str(image_id)), int(self.ys[row]), int(self.xs[row])))
                else:
                    rep.unlabelled_pixels += empty
        return labels, rep
