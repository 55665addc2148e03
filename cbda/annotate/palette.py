"""Class colours for tools and previews: Cityscapes' own for its class names, else a fixed
spread of hues."""
from __future__ import annotations

import colorsys

import numpy as np

__all__ = ["class_colours", "hex_colour"]

_CITYSCAPES = {
    "road": (128, 64, 128), "sidewalk": (244, 35, 232), "building": (70, 70, 70),
    "wall": (102, 102, 156), "fence": (190, 153, 153), "pole": (153, 153, 153),
    "light": (250, 170, 30), "sign": (220, 220, 0), "vegetation": (107, 142, 35),
    "terrain": (152, 251, 152), "sky": (70, 130, 180), "person": (220, 20, 60),
    "rider": (255, 0, 0), "car": (0, 0, 142), "truck": (0, 0, 70), "bus": (0, 60, 100),
    "train": (0, 80, 100), "motorcycle": (0, 0, 230), "bicycle": (119, 11, 32),
}


def class_colours(names) -> np.ndarray:
    """(C, 3) uint8 RGB colour of each class name."""
    out = np.zeros((len(names), 3), dtype=np.uint8)
    for c, n in enumerate(names):
        if n in _CITYSCAPES:
            out[c] = _CITYSCAPES[n]
        else:  # golden-ratio hue steps keep neighbours apart
            r, g, b = colorsys.hsv_to_rgb((c * 0.618034) % 1.0, 0.65, 0.9)
            out[c] = (int(r * 255), int(g * 255), int(b * 255))
    return out


def hex_colour(rgb) -> str:
    """'#rrggbb' of an RGB triple."""
    return "#%02x%02x%02x" % tuple(int(v) for v in rgb)
