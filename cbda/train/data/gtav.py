"""GTAV in its published layout: `images/NNNNN.png`, `labels/NNNNN.png` (Cityscapes label ids)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import SegmentationFiles, paired_files
from .imageio import read_label
from .labels import cityscapes_lut

LAYOUT = "images/NNNNN.png and labels/NNNNN.png"


class GTAV(SegmentationFiles):
    """GTAV, images sorted by name; only images with a label file of the same name are used."""

    def __init__(self, root: str | Path, size=None, num_classes: int = 19, with_labels: bool = True, label_size="image",
                 config_key: str = "data.source_root"):
        images, labels = paired_files(Path(root), "images", "labels", "GTAV", LAYOUT, config_key)
        super().__init__(images, labels, size, with_labels, label_size)
        self.lut = cityscapes_lut(num_classes)

    def read_gt(self, index: int) -> np.ndarray:
        return self.lut[read_label(self.labels[index])]
