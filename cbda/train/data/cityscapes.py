"""Cityscapes in its published layout:
`leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`, `gtFine/<split>/<city>/<stem>_gtFine_labelIds.png`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import DatasetNotFoundError, SegmentationFiles, require_dir
from .imageio import read_label
from .labels import cityscapes_lut

LAYOUT = "leftImg8bit/<split>/<city>/*_leftImg8bit.png and gtFine/<split>/<city>/*_gtFine_labelIds.png"


class Cityscapes(SegmentationFiles):
    """Cityscapes `split` ("train" / "val"), images sorted by path; index = image id."""

    def __init__(self, root: str | Path, split: str = "train", size=None, num_classes: int = 19,
                 with_labels: bool = True, label_size="image", config_key: str = "data.target_root"):
        root = Path(root)
        img_dir = require_dir(root / "leftImg8bit" / split, "Cityscapes", LAYOUT, config_key)
        images = sorted(img_dir.glob("*/*_leftImg8bit.png"))
        if not images:
            raise DatasetNotFoundError(f"Cityscapes: no */*_leftImg8bit.png under {img_dir} "
                                       f"(expected {LAYOUT}); set `{config_key}`.")
        gt_dir = root / "gtFine" / split
        labels = [gt_dir / p.parent.name / p.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
                  for p in images]
        if with_labels:
            missing = [p for p in labels if not p.is_file()]
            if missing:
                raise DatasetNotFoundError(
                    f"Cityscapes: {len(missing)} label files missing under {gt_dir}, e.g. {missing[0]} "
                    f"(expected {LAYOUT}); set `{config_key}`.")
        super().__init__(images, labels, size, with_labels, label_size)
        self.lut = cityscapes_lut(num_classes)

    def read_gt(self, index: int) -> np.ndarray:
        return self.lut[read_label(self.labels[index])]
