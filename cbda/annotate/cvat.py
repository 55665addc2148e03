"""CVAT: a round's pre-annotations as "CVAT for images 1.1" XML, and that format read back.

Each picked image becomes an ``<image>`` element named as CVAT's task lists it (the path
relative to the image root) with one ``<mask>`` per predicted class: CVAT's RLE inside the
class's bounding box over the picked windows, so CVAT imports them as masks without any
polygon conversion. The meta section declares the classes as mask labels.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np

from ..errors import InputError
from .mask_rle import decode_cvat_rle, encode_cvat_rle, format_cvat_rle, parse_cvat_rle
from .palette import class_colours, hex_colour
from .windows import VOID, RoundWindows

__all__ = ["build_xml", "parse_xml"]


def _mask_elements(parent: ET.Element, pred: np.ndarray, class_names) -> None:
    for c in np.unique(pred[pred != VOID]).tolist():
        m = pred == c
        ys, xs = np.nonzero(m)
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
        ET.SubElement(parent, "mask", {
            "label": str(class_names[c]), "source": "auto", "occluded": "0", "z_order": "0",
            "rle": format_cvat_rle(encode_cvat_rle(m[y0:y1 + 1, x0:x1 + 1])),
            "left": str(x0), "top": str(y0), "width": str(x1 - x0 + 1), "height": str(y1 - y0 + 1),
        })


def build_xml(windows: RoundWindows, catalog, class_names, predicted: np.ndarray) -> bytes:
    """The "CVAT for images 1.1" XML bytes of one round's pre-annotations (see module doc)."""
    h, w = windows.image_size
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    ET.SubElement(task, "name").text = f"cbda round {windows.round_index}"
    ET.SubElement(task, "size").text = str(int(windows.image_ids.shape[0]))
    labels = ET.SubElement(task, "labels")
    for name, rgb in zip(class_names, class_colours(class_names)):
        lab = ET.SubElement(labels, "label")
        ET.SubElement(lab, "name").text = str(name)
        ET.SubElement(lab, "color").text = hex_colour(rgb)
        ET.SubElement(lab, "type").text = "mask"
        ET.SubElement(lab, "attributes")
    for k, image_id in enumerate(windows.image_ids.tolist()):
        img = ET.SubElement(root, "image", {"id": str(k), "name": catalog.name(image_id),
                                             "width": str(w), "height": str(h)})
        _mask_elements(img, windows.paint(image_id, predicted), class_names)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _int_attr(el: ET.Element, key: str, where: str) -> int:
    try:
        return int(float(el.get(key)))
    except (TypeError, ValueError):
        raise InputError(f"FILE: {where}: <{el.tag}> has no valid {key!r} attribute ({el.get(key)!r})") from None


def parse_xml(path, windows: RoundWindows, catalog, class_names) -> tuple[dict, dict, int]:
    """Read a "CVAT for images 1.1" export into per-image label maps of ``windows``' round.

    Images are matched to ids by name through ``catalog``. Returns (maps: image id -> (H, W)
    uint8 train ids inside the windows, 255 elsewhere; names; overlapping pixels). Later
    masks (higher ``z_order``, then document order) win where masks overlap.
    """
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise InputError(f"FILE: cannot read {path} as CVAT XML ({e})") from None
    if root.tag != "annotations":
        raise InputError(f"FILE: the root element is <{root.tag}>, a CVAT for images 1.1 export has <annotations>")
    index = {n: c for c, n in enumerate(class_names)}
    h, w = windows.image_size
    maps, names, overlap = {}, {}, 0
    for img in root.iter("image"):
        name = img.get("name", "")
        where = f"image {name!r} (id {img.get('id')})"
        image_id = catalog.id_of(name)
        if image_id is None:
            raise InputError(f"FILE: {where} is not an image of the target set (names are paths relative "
                             f"to {catalog.root})")
        if not windows.has_image(image_id):
            raise InputError(f"FILE: {where} had no picks in round {windows.round_index}")
        if image_id in maps:
            raise InputError(f"FILE: {where} appears twice")
        if (_int_attr(img, "height", where), _int_attr(img, "width", where)) != (h, w):
            raise InputError(f"FILE: {where}: mask of size {img.get('width')}x{img.get('height')} (WxH), the label "
                             f"grid is {w}x{h}: the task's images must be at the label size")
        inside = windows.window_mask(image_id)
        out = np.full((h, w), VOID, dtype=np.uint8)
        shapes = []
        for pos, el in enumerate(img):
            if el.tag != "mask":
                raise InputError(f"FILE: {where}: <{el.tag}> shapes are not supported; draw masks (brush) only")
            shapes.append((_int_attr(el, "z_order", where) if el.get("z_order") is not None else 0, pos, el))
        for _, _, el in sorted(shapes, key=lambda s: (s[0], s[1])):
            label = el.get("label")
            if label not in index:
                raise InputError(f"FILE: {where}: unknown class name {label!r}; known: {', '.join(class_names)}")
            left, top = _int_attr(el, "left", where), _int_attr(el, "top", where)
            bw, bh = _int_attr(el, "width", where), _int_attr(el, "height", where)
            if left < 0 or top < 0 or left + bw > w or top + bh > h:
                raise InputError(f"FILE: {where}: a {label!r} mask box ({left}, {top}, {bw}x{bh}) leaves the {w}x{h} image")
            try:
                bits = decode_cvat_rle(parse_cvat_rle(el.get("rle", "")), bw, bh)
            except InputError as e:
                raise InputError(f"FILE: {where}: {label!r} mask: {e}") from None
            mask = np.zeros((h, w), dtype=bool)
            mask[top:top + bh, left:left + bw] = bits
            mask &= inside
            c = index[label]
            overlap += int(((out != VOID) & (out != c) & mask).sum())
            out[mask] = c
        maps[image_id] = out
        names[image_id] = name
    return maps, names, overlap
