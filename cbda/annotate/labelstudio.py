"""Label Studio: the labelling config and tasks of a round, and its JSON export read back.

Each task is one image with picks. ``data.image`` points at the image (a URL or Label
Studio's local file serving); ``data.cbda_round``, ``cbda_image_id`` and ``cbda_windows``
(inclusive ``[y0, x0, y1, x1]`` boxes) keep the picked windows, so the import can check that
the answers belong to the round they are imported into. ``predictions`` pre-annotate exactly
the picked pixels with the model's predicted classes: one brush region per class, in Label
Studio's RLE over the image's RGBA buffer at the label grid's size.
"""
from __future__ import annotations

import json
from xml.sax.saxutils import quoteattr

import numpy as np

from ..errors import InputError
from .brush_rle import brush_rle_to_mask, mask_to_brush_rle
from .palette import class_colours, hex_colour
from .windows import VOID, RoundWindows

__all__ = ["labelling_config", "build_tasks", "parse_export", "FROM_NAME", "TO_NAME"]

FROM_NAME = "label"
TO_NAME = "image"


def labelling_config(class_names) -> str:
    """The Label Studio labelling config (XML): BrushLabels over ``class_names``."""
    colours = class_colours(class_names)
    lines = ["<View>", f'  <Image name="{TO_NAME}" value="$image" zoom="true" zoomControl="true"/>',
             f'  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">']
    for name, rgb in zip(class_names, colours):
        lines.append(f"    <Label value={quoteattr(str(name))} background=\"{hex_colour(rgb)}\"/>")
    lines += ["  </BrushLabels>", "</View>", ""]
    return "\n".join(lines)


def _brush_results(pred_map: np.ndarray, class_names, prefix: str) -> list[dict]:
    h, w = pred_map.shape
    out = []
    for c in np.unique(pred_map[pred_map != VOID]).tolist():
        out.append({
            "id": f"{prefix}{c}", "from_name": FROM_NAME, "to_name": TO_NAME, "type": "brushlabels",
            "original_width": int(w), "original_height": int(h), "image_rotation": 0,
            "value": {"format": "rle", "rle": mask_to_brush_rle(pred_map == c), "brushlabels": [class_names[c]]},
        })
    return out


def build_tasks(windows: RoundWindows, catalog, class_names, predicted: np.ndarray,
                image_url: str | None = None, local_root=None) -> list[dict]:
    """The tasks JSON (a list) of one round: one task per image with picks.

    Args:
        windows: the round's picks.
        catalog: an ``ImageCatalog`` serving the images at the label size.
        predicted: (n, k, k) or (n, H, W) uint8 predicted train ids per window (255 = none).
        image_url / local_root: see ``ImageCatalog.reference``.
    """
    tasks = []
    for image_id in windows.image_ids.tolist():
        pred = windows.paint(image_id, predicted)
        rows = windows.rows(image_id)
        tasks.append({
            "data": {
                TO_NAME: catalog.reference(image_id, image_url, local_root),
                "cbda_round": windows.round_index, "cbda_image_id": int(image_id),
                "cbda_name": catalog.name(image_id),
                "cbda_windows": windows.boxes[rows].tolist(),
            },
            "predictions": [{
                "model_version": f"cbda-round-{windows.round_index}",
                "result": _brush_results(pred, class_names, f"cbda-{image_id}-"),
            }],
        })
    return tasks


def _task_label(task: dict, k: int) -> str:
    data = task.get("data") if isinstance(task, dict) else None
    name = data.get("cbda_name") if isinstance(data, dict) else None
    tid = task.get("id") if isinstance(task, dict) else None
    return f"task {tid if tid is not None else '#' + str(k)} (image {name or '?'})"


def _chosen_annotation(task: dict, where: str):
    """The annotation to use: the latest submitted one (highest id / last listed); None if
    every annotation was skipped."""
    anns = task.get("annotations")
    if not isinstance(anns, list) or not anns:
        raise InputError(f"{where}: has no annotation; label it (or skip it in Label Studio) before exporting")
    live = [a for a in anns if isinstance(a, dict) and not a.get("was_cancelled")]
    if not live:
        return None
    return max(enumerate(live), key=lambda p: (p[1].get("id") if isinstance(p[1].get("id"), int) else -1, p[0]))[1]


def parse_export(path_or_data, windows_of, class_names, label_size) -> tuple[int, dict, dict, int]:
    """Read a Label Studio JSON export into per-image label maps.

    Args:
        path_or_data: the export file path, or the parsed list.
        windows_of: callable round_index -> RoundWindows (raises for an unknown round).
        label_size: (H, W) the masks must have.
    Returns:
        (round_index, maps: image id -> (H, W) uint8 train ids inside the round's windows and
        255 elsewhere, names: image id -> name, overlapping pixels). Raises InputError naming
        the task and image for anything invalid; nothing is recorded here.
    """
    data = path_or_data
    if not isinstance(data, list):
        try:
            with open(path_or_data, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise InputError(f"FILE: cannot read {path_or_data} as a Label Studio JSON export ({e})") from None
    if not isinstance(data, list):
        raise InputError("FILE: a Label Studio JSON export is a list of tasks; got a "
                         f"{type(data).__name__} (export with the 'JSON' format)")
    index = {n: c for c, n in enumerate(class_names)}
    h, w = label_size
    rounds = set()
    for k, task in enumerate(data):
        d = task.get("data") if isinstance(task, dict) else None
        if not isinstance(d, dict) or "cbda_round" not in d or "cbda_image_id" not in d:
            raise InputError(f"FILE: {_task_label(task, k)} has no cbda_round/cbda_image_id in its data: "
                             "not a task exported by `cbda export`")
        rounds.add(d["cbda_round"])
    if len(rounds) != 1:
        raise InputError(f"FILE: tasks of {len(rounds)} rounds {sorted(map(str, rounds))} in one file; "
                         "export one round (one project) at a time")
    round_index = rounds.pop()
    if not isinstance(round_index, int):
        raise InputError(f"FILE: cbda_round must be an int, got {round_index!r}")
    windows = windows_of(round_index)
    maps, names, overlap = {}, {}, 0
    for k, task in enumerate(data):
        where = _task_label(task, k)
        image_id = task["data"]["cbda_image_id"]
        if isinstance(image_id, bool) or not windows.has_image(image_id):
            raise InputError(f"FILE: {where}: image id {image_id!r} had no picks in round {round_index}")
        if image_id in maps:
            raise InputError(f"FILE: {where}: image id {image_id} appears in two tasks")
        boxes = task["data"].get("cbda_windows")
        if boxes != windows.boxes[windows.rows(image_id)].tolist():
            raise InputError(f"FILE: {where}: its cbda_windows differ from the picks recorded for round "
                             f"{round_index}: the file belongs to another run or round")
        names[image_id] = task["data"].get("cbda_name") or str(image_id)
        inside = windows.window_mask(image_id)
        out = np.full((h, w), VOID, dtype=np.uint8)
        ann = _chosen_annotation(task, f"FILE: {where}")
        results = ann.get("result", []) if ann is not None else []
        if not isinstance(results, list):
            raise InputError(f"FILE: {where}: annotation result must be a list")
        for res in results:
            if not isinstance(res, dict) or res.get("type") != "brushlabels":
                kind = res.get("type") if isinstance(res, dict) else type(res).__name__
                raise InputError(f"FILE: {where}: result of type {kind!r} is not supported; label with the brush "
                                 "(BrushLabels) of the exported labelling config")
            value = res.get("value") or {}
            labels = value.get("brushlabels") or []
            if len(labels) != 1:
                raise InputError(f"FILE: {where}: a brush region must carry exactly one class, got {labels!r}")
            if labels[0] not in index:
                raise InputError(f"FILE: {where}: unknown class name {labels[0]!r}; known: {', '.join(class_names)}")
            ow, oh = res.get("original_width"), res.get("original_height")
            if (oh, ow) != (h, w):
                raise InputError(f"FILE: {where}: mask of size {ow}x{oh} (WxH), the label grid is {w}x{h}: "
                                 "serve the images at the label size")
            if value.get("format", "rle") != "rle" or "rle" not in value:
                raise InputError(f"FILE: {where}: brush region without an 'rle' mask")
            try:
                mask = brush_rle_to_mask(value["rle"], h, w) & inside
            except InputError as e:
                raise InputError(f"FILE: {where}: {e}") from None
            c = index[labels[0]]
            overlap += int(((out != VOID) & (out != c) & mask).sum())
            out[mask] = c
        maps[image_id] = out
    return round_index, maps, names, overlap
