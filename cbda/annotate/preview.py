"""Previews of a round for people: each picked image with its windows filled by the predicted
class and outlined, and contact sheets of the round's images as thumbnails.

In the thumbnails a 3×3 window is smaller than a pixel, so each window is drawn there as a
dot of at least 3 pixels in its predicted class's colour.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..state.export import atomic_write
from .palette import class_colours
from .windows import VOID, RoundWindows

__all__ = ["write_previews"]

_ALPHA = 0.6
_THUMB_W = 192
_SHEET_COLS = 8
_SHEET_MAX = 96


def _png_bytes(im) -> bytes:
    import io

    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _overlay(rgb: np.ndarray, pred: np.ndarray, boxes: np.ndarray, colours: np.ndarray) -> np.ndarray:
    out = rgb.astype(np.float32)
    m = pred != VOID
    out[m] = (1 - _ALPHA) * out[m] + _ALPHA * colours[pred[m]].astype(np.float32)
    out = out.astype(np.uint8)
    h, w = pred.shape
    inside = np.zeros((h, w), dtype=bool)
    grown = np.zeros((h, w), dtype=bool)
    for y0, x0, y1, x1 in boxes.tolist():
        inside[y0:y1 + 1, x0:x1 + 1] = True
        grown[max(y0 - 1, 0):y1 + 2, max(x0 - 1, 0):x1 + 2] = True
    # the outline runs one pixel outside the windows and never over another window, so every
    # picked pixel keeps its predicted colour (windows of neighbouring picks may touch)
    out[grown & ~inside] = (255, 255, 255)
    return out


def write_previews(windows: RoundWindows, catalog, class_names, predicted: np.ndarray, out_dir) -> list[str]:
    """Write ``<out_dir>/<name>.png`` per picked image and ``contact_sheet[_NN].png``.

    Args:
        catalog: ``ImageCatalog`` serving images at the label size.
        predicted: window values (train ids, 255 = none) shaped like the round's labels.
    Returns:
        the written paths (images first, then sheets).
    """
    from PIL import Image, ImageDraw

    out_dir = Path(out_dir)
    colours = class_colours(class_names)
    h, w = windows.image_size
    written, thumbs = [], []
    th = max(1, round(_THUMB_W * h / w))
    for image_id in windows.image_ids.tolist():
        path, _ = catalog.file_for(image_id)
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB").resize((w, h), Image.BICUBIC) if im.size != (w, h) else im.convert("RGB"))
        pred = windows.paint(image_id, predicted)
        rows = windows.rows(image_id)
        img = _overlay(rgb, pred, windows.boxes[rows], colours)
        dst = out_dir / (catalog.name(image_id).rsplit(".", 1)[0] + ".png")
        dst.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dst, _png_bytes(Image.fromarray(img)))
        written.append(str(dst))
        thumb = Image.fromarray(rgb).resize((_THUMB_W, th), Image.BILINEAR)
        draw = ImageDraw.Draw(thumb)
        sy, sx = th / h, _THUMB_W / w
        for row in rows.tolist():
            y0, x0, y1, x1 = windows.boxes[row].tolist()
            cy, cx = (y0 + y1 + 1) / 2 * sy, (x0 + x1 + 1) / 2 * sx
            rad = max(1.5, (x1 - x0 + 1) * sx / 2)
            c = windows.classes[row] if windows.unit == "region" else None
            fill = tuple(int(v) for v in colours[c]) if c is not None and 0 <= c < len(colours) else (255, 255, 255)
            draw.rectangle([cx - rad, cy - rad, cx + rad, cy + rad], fill=fill, outline=(255, 255, 255))
        thumbs.append((thumb, catalog.name(image_id)))
    sheets = [thumbs[i:i + _SHEET_MAX] for i in range(0, len(thumbs), _SHEET_MAX)]
    for s, group in enumerate(sheets, start=1):
        cols = min(_SHEET_COLS, len(group))
        rows_n = math.ceil(len(group) / cols)
        cell_h = th + 14
        sheet = Image.new("RGB", (cols * (_THUMB_W + 4) + 4, rows_n * (cell_h + 4) + 4), (32, 32, 32))
        draw = ImageDraw.Draw(sheet)
        for k, (thumb, name) in enumerate(group):
            x, y = 4 + (k % cols) * (_THUMB_W + 4), 4 + (k // cols) * (cell_h + 4)
            sheet.paste(thumb, (x, y))
            draw.text((x + 2, y + th + 1), name.rsplit("/", 1)[-1][:32], fill=(230, 230, 230))
        dst = out_dir / ("contact_sheet.png" if len(sheets) == 1 else f"contact_sheet_{s:02d}.png")
        dst.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dst, _png_bytes(sheet))
        written.append(str(dst))
    return written
