"""The public entry points: export a round for people to label, import their answers.

    files = export_round(state, 2, "runs/x/annotate/round_0002", ["labelstudio", "cvat", "preview"],
                         images=dataset_paths, class_names=names)
    report = import_answers(state, "export.json", images=dataset_paths, class_names=names)

``images`` is the sequence of image files indexed by image id (a dataset's file list); names
in the tools are their paths relative to ``image_root`` (default: the folder holding them all).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import InputError, StateError
from ..state.export import atomic_write
from . import cvat, labelstudio
from .images import ImageCatalog
from .preview import write_previews
from .windows import ImportReport, RoundWindows

__all__ = ["FORMATS", "export_round", "read_answers", "import_answers", "MANIFEST"]

FORMATS = ("labelstudio", "cvat", "png", "json", "preview")
MANIFEST = "cbda_export.json"


def _class_names(state, class_names) -> list[str]:
    names = [str(n) for n in class_names]
    if len(names) != state.num_classes:
        raise InputError(f"class_names: expected {state.num_classes} names (num_classes), got {len(names)}")
    if len(set(names)) != len(names):
        raise InputError(f"class_names: names must be unique, got {names}")
    return names


def _prepare_out_dir(out_dir) -> Path:
    """The export folder: created by us, or one we created before (it holds our manifest)."""
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise InputError(f"out_dir: {out} exists and is not a folder")
        if any(out.iterdir()) and not (out / MANIFEST).is_file():
            raise InputError(f"out_dir: {out} is not empty and was not written by `cbda export`; "
                             "choose a new folder")
    return out


def export_round(state, round_index: int, out_dir, formats=("labelstudio",), *, images, class_names,
                 image_root=None, predicted=None, image_url: str | None = None, local_root=None) -> dict:
    """Write round ``round_index`` of ``state`` for annotation.

    Args:
        formats: any of ``labelstudio`` (config.xml + tasks.json), ``cvat`` (annotations.xml,
            CVAT for images 1.1 with masks), ``png`` (RIPU masks of the labels so far),
            ``json`` (the region list), ``preview`` (overlays and contact sheets).
        images: image file paths indexed by image id; image_root: what names are relative to.
        predicted: per-window predicted train ids shaped like the round's labels ((n, k, k) or
            (n, H, W) uint8, 255 = none); default: each window filled with its pick's class.
        image_url: Label Studio tasks point at ``image_url/<name>``; default local file serving
            relative to ``local_root`` (see ``ImageCatalog.reference``).
    Returns:
        {format: [written paths]}. Images not at the label size are copied, resized, to
        ``<out_dir>/images`` so that every tool shows the label grid.
    """
    formats = [formats] if isinstance(formats, str) else list(formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise InputError(f"format: expected some of {', '.join(FORMATS)}, got {formats!r}")
    names = _class_names(state, class_names)
    windows = RoundWindows(state, round_index)
    catalog = ImageCatalog(images, image_root)
    if len(catalog) < (state.num_images or 0):
        raise InputError(f"images: {len(catalog)} files for {state.num_images} images (num_images)")
    for i in windows.image_ids.tolist():
        catalog.path(i)  # every picked id has a file
    pred = windows.centre_class_values() if predicted is None else windows.check_window_values(predicted, "predicted")
    out = _prepare_out_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {}
    try:  # a later export of the same round into the same folder adds to what is there
        old = json.loads((out / MANIFEST).read_text())
        manifest = old if old.get("round") == windows.round_index else {}
    except (OSError, ValueError, AttributeError):
        pass
    manifest.update({"round": windows.round_index, "image_size": list(windows.image_size), "classes": names,
                     "images": {catalog.name(i): i for i in windows.image_ids.tolist()},
                     "formats": sorted(set(manifest.get("formats", [])) | set(formats))})
    atomic_write(out / MANIFEST, json.dumps(manifest, indent=1).encode("utf-8"))
    written: dict[str, list[str]] = {}
    served = catalog
    if any(f in ("labelstudio", "cvat", "preview") for f in formats):
        served = catalog.served(windows.image_ids.tolist(), windows.image_size, out / "images")
    if "labelstudio" in formats and not image_url and windows.n:
        first = int(windows.image_ids[0])
        doc_root, storage = served.local_files_root(first)
        manifest["labelstudio_local_files"] = {
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(local_root or doc_root), "storage_path": str(storage)}
        atomic_write(out / MANIFEST, json.dumps(manifest, indent=1).encode("utf-8"))
    for fmt in formats:
        if fmt == "labelstudio":
            d = out / "labelstudio"
            d.mkdir(exist_ok=True)
            tasks = labelstudio.build_tasks(windows, served, names, pred, image_url, local_root)
            atomic_write(d / "config.xml", labelstudio.labelling_config(names).encode("utf-8"))
            atomic_write(d / "tasks.json", json.dumps(tasks).encode("utf-8"))
            written[fmt] = [str(d / "config.xml"), str(d / "tasks.json")]
        elif fmt == "cvat":
            d = out / "cvat"
            d.mkdir(exist_ok=True)
            atomic_write(d / "annotations.xml", cvat.build_xml(windows, served, names, pred))
            written[fmt] = [str(d / "annotations.xml")]
        elif fmt == "preview":
            written[fmt] = write_previews(windows, served, names, pred, out / "previews")
        elif fmt == "png":
            written[fmt] = state.export_masks(out / "png", names=lambda i: _mask_stem(catalog.name(i)),
                                              allow_pending=True)
        elif fmt == "json":
            state.export_regions(out / "regions.json", names=lambda i: catalog.name(i))
            written[fmt] = [str(out / "regions.json")]
    return written


def _mask_stem(name: str) -> str:
    """RIPU's mask name of an image: 'aachen/aachen_000000_000019_leftImg8bit.png' ->
    'aachen/aachen_000000_000019' (export_masks appends _gtFine_labelIds.png)."""
    stem = name.rsplit(".", 1)[0]
    return stem[: -len("_leftImg8bit")] if stem.endswith("_leftImg8bit") else stem


def _detect_format(path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(256).lstrip()
    except OSError as e:
        raise InputError(f"FILE: cannot read {path} ({e.strerror})") from None
    if head.startswith(b"<"):
        return "cvat"
    if head.startswith(b"[") or head.startswith(b"{"):
        return "labelstudio"
    raise InputError(f"FILE: {path} is neither a Label Studio JSON export nor a CVAT for images 1.1 XML export")


def _single_pending(state) -> int:
    pending = state.pending_rounds()
    if len(pending) != 1:
        raise StateError(f"round: {'no round waits' if not pending else f'rounds {pending} wait'} for labels; "
                         "name the round to import into")
    return pending[0]


def read_answers(state, path, *, images, class_names, image_root=None, round_index: int | None = None):
    """Parse an annotation export (Label Studio JSON or CVAT XML, detected from the content)
    into the labels of one round, without recording them.

    Returns:
        (round_index, labels shaped like the round's labels (uint8), ImportReport). Raises
        InputError naming the task/image for unknown classes, masks of the wrong size, images
        without picks, images of the round missing from the file. Windows left unlabelled are
        allowed: they become void (255) and are counted in the report.
    """
    names = _class_names(state, class_names)
    catalog = ImageCatalog(images, image_root)
    fmt = _detect_format(path)
    if fmt == "labelstudio":
        def windows_of(r):
            if round_index is not None and r != round_index:
                raise InputError(f"FILE: its tasks belong to round {r}, not to round {round_index}")
            return RoundWindows(state, r)
        r, maps, img_names, overlap = labelstudio.parse_export(os.fspath(path), windows_of, names, state.image_size)
        windows = RoundWindows(state, r)
    else:
        r = round_index if round_index is not None else _single_pending(state)
        windows = RoundWindows(state, r)
        maps, img_names, overlap = cvat.parse_xml(os.fspath(path), windows, catalog, names)
    labels, rep = windows.labels_from_maps(maps, img_names)
    rep.overlapping_pixels = overlap
    return r, labels, rep


def import_answers(state, path, *, images, class_names, image_root=None, round_index: int | None = None,
                   replace: bool = False) -> ImportReport:
    """``read_answers`` then ``state.set_labels``: the whole file or nothing.

    A round whose labels were already set is refused unless ``replace``.
    """
    r, labels, rep = read_answers(state, path, images=images, class_names=class_names,
                                  image_root=image_root, round_index=round_index)
    if not replace and not state.labels_pending(r):
        raise StateError(f"round {r} already has labels; pass replace=True (--replace) to overwrite them")
    state.set_labels(r, labels)
    return rep
