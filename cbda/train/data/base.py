"""Shared machinery of the file-list segmentation datasets (Cityscapes, GTAV, SYNTHIA)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import TrainError
from .imageio import read_rgb, resize_nearest


class DatasetNotFoundError(TrainError, FileNotFoundError):
    """A dataset folder (or its files) is missing; the message names the folder expected."""


def require_dir(path: Path, dataset: str, layout: str, config_key: str) -> Path:
    """Return `path` if it is a non-empty directory, else raise a DatasetNotFoundError that
    names the folder expected, the layout, and the config key that sets the root."""
    if not path.is_dir() or not any(path.iterdir()):
        raise DatasetNotFoundError(
            f"{dataset} not found: expected the folder {path} ({layout}). "
            f"Set `{config_key}=<root>` to where the dataset lives.")
    return path


def paired_files(root: Path, image_dir: str, label_dir: str, dataset: str, layout: str,
                 config_key: str) -> tuple[list[Path], list[Path]]:
    """(images, labels) of a flat layout where each `<image_dir>/X.png` has its label at
    `<label_dir>/X.png` (GTAV, SYNTHIA): images sorted by name, those without a label skipped.
    Raises DatasetNotFoundError naming the folder, the layout and the config key."""
    img_dir = require_dir(root / image_dir, dataset, layout, config_key)
    lbl_dir = require_dir(root / label_dir, dataset, layout, config_key)
    images = [p for p in sorted(img_dir.glob("*.png")) if (lbl_dir / p.name).is_file()]
    if not images:
        raise DatasetNotFoundError(f"{dataset}: no image with a matching label under {root} "
                                   f"(expected {layout}); set `{config_key}`.")
    return images, [lbl_dir / p.name for p in images]


class SegmentationFiles(Dataset):
    """A list of (image, label) files with a label-id map.

    __getitem__(i) -> {"image": (3, H, W) uint8 tensor resized bicubically to `size`,
    "label": (h, w) int64 train ids (255 void) resized nearest to `label_size` ("image": as the
    image, None: native) if with_labels,
    "index": i}. Normalisation happens on the device, in the trainer.
    """

    def __init__(self, images: list[Path], labels: list[Path] | None,
                 size: tuple[int, int] | None, with_labels: bool = True, label_size="image"):
        self.images = images
        self.labels = labels
        self.size = tuple(size) if size is not None else None
        # "image": labels follow the image size (training); None: native size (evaluation)
        self.label_size = self.size if label_size == "image" else (
            tuple(label_size) if label_size is not None else None)
        self.with_labels = with_labels and labels is not None

    def __len__(self) -> int:
        return len(self.images)

    def names(self) -> list[str]:
        return [p.name for p in self.images]

    def file_stamps(self) -> list[str]:
        """"name:size:mtime_ns" of every label file (images when there are no labels): a cache
        key that changes when a file is replaced, not only when names change."""
        out = []
        for p in self.labels if self.labels is not None else self.images:
            st = p.stat()
            out.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
        return out

    def read_gt(self, index: int) -> np.ndarray:
        """(H, W) uint8 train ids (255 void) at the label file's native size."""
        raise NotImplementedError

    def native_label_size(self) -> tuple[int, int]:
        """(H, W) of the label files (from the first file's header)."""
        with Image.open(self.labels[0]) as im:
            return im.size[1], im.size[0]

    def __getitem__(self, index: int) -> dict:
        image = read_rgb(self.images[index], self.size)
        item = {"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(), "index": index}
        if self.with_labels:
            gt = self.read_gt(index)
            if self.label_size is not None:
                gt = resize_nearest(gt, self.label_size)
            item["label"] = torch.from_numpy(gt.astype(np.int64))
        return item
