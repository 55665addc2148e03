"""Class lists and label-id maps of Cityscapes, GTAV and SYNTHIA.

All maps are 256-entry (or 65536-entry for SYNTHIA's 16-bit ids) uint8 look-up tables from a
dataset's stored id to our train id, with 255 = void. 19-class runs use the Cityscapes train ids;
16-class runs (SYNTHIA) drop terrain, truck and train and renumber the rest in order.
"""
from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "light", "sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

# Cityscapes label id of each of the 19 train ids (GTAV uses the same ids).
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)

# The 16 classes shared by SYNTHIA and Cityscapes, as indices into CITYSCAPES_CLASSES.
SYNTHIA16_FROM_19 = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
SYNTHIA16_CLASSES = tuple(CITYSCAPES_CLASSES[i] for i in SYNTHIA16_FROM_19)

# SYNTHIA-RAND-CITYSCAPES id of each of the 16 classes (in SYNTHIA16_CLASSES order).
SYNTHIA_LABEL_IDS = (3, 4, 2, 21, 5, 7, 15, 9, 6, 1, 10, 17, 8, 19, 12, 11)


def class_names(num_classes: int) -> tuple[str, ...]:
    """Names of the classes of a 19- or 16-class run."""
    if num_classes == 19:
        return CITYSCAPES_CLASSES
    if num_classes == 16:
        return SYNTHIA16_CLASSES
    raise ValueError(f"num_classes must be 19 or 16, got {num_classes}")


def cityscapes_lut(num_classes: int = 19) -> np.ndarray:
    """(256,) uint8: Cityscapes/GTAV label id -> train id (255 void)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    if num_classes == 19:
        for train_id, label_id in enumerate(CITYSCAPES_LABEL_IDS):
            lut[label_id] = train_id
    elif num_classes == 16:
        for train_id, idx19 in enumerate(SYNTHIA16_FROM_19):
            lut[CITYSCAPES_LABEL_IDS[idx19]] = train_id
    else:
        raise ValueError(f"num_classes must be 19 or 16, got {num_classes}")
    return lut


def synthia_lut(num_classes: int = 16) -> np.ndarray:
    """(65536,) uint8: SYNTHIA class id (channel 0 of the 16-bit GT) -> train id (255 void).

    With num_classes=19 the ids map to the Cityscapes 19-class train ids (terrain, truck and
    train then simply never occur)."""
    lut = np.full(65536, IGNORE_INDEX, dtype=np.uint8)
    for idx16, synthia_id in enumerate(SYNTHIA_LABEL_IDS):
        lut[synthia_id] = idx16 if num_classes == 16 else SYNTHIA16_FROM_19[idx16]
    if num_classes not in (16, 19):
        raise ValueError(f"num_classes must be 19 or 16, got {num_classes}")
    return lut


def train_ids_19_to(num_classes: int) -> np.ndarray:
    """(256,) uint8: 19-class train id -> train id of a `num_classes` run (255 stays 255)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    if num_classes == 19:
        lut[:19] = np.arange(19)
    else:
        for idx16, idx19 in enumerate(SYNTHIA16_FROM_19):
            lut[idx19] = idx16
    return lut
