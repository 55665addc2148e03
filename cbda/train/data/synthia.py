"""SYNTHIA-RAND-CITYSCAPES in its published layout: `RGB/NNNNNNN.png`, `GT/LABELS/NNNNNNN.png`
(16-bit PNG, class id in channel 0)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import SegmentationFiles, paired_files
from .imageio import read_png16
from .labels import synthia_lut

LAYOUT = "RGB/NNNNNNN.png and GT/LABELS/NNNNNNN.png (16-bit, class id in channel 0)"


class Synthia(SegmentationFiles):
    """SYNTHIA-RAND-CITYSCAPES, images sorted by name."""

    def __init__(self, root: str | Path, size=None, num_classes: int = 16, with_labels: bool = True, label_size="image",
                 config_key: str = "data.source_root"):
        images, labels = paired_files(Path(root), "RGB", "GT/LABELS", "SYNTHIA", LAYOUT, config_key)
        super().__init__(images, labels, size, with_labels, label_size)
        self.lut = synthia_lut(num_classes)

    def read_gt(self, index: int) -> np.ndarray:
        return self.lut[read_png16(self.labels[index])[..., 0]]
