"""Atomic file writes and the exports of a labelling state (RIPU masks, region lists)."""

from __future__ import annotations

import json
import os

from ..errors import InputError, StateError
from .png import encode_png

__all__ = ["atomic_write", "export_masks", "export_regions"]


def atomic_write(path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one.

    The bytes go to ``<path>.tmp-<pid>`` in the same directory (``os.replace`` is atomic only
    within one file system), are flushed and fsynced, then renamed over ``path``. On any
    error the temporary file is removed and the old file is untouched.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    # Make the rename itself durable; not every platform lets a directory be opened.
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _name_of(names, image_id: int) -> str:
    if names is None:
        return f"{image_id:06d}"
    try:
        name = names(image_id) if callable(names) else names[image_id]
    except (IndexError, KeyError) as e:
        raise InputError(f"names: no name for image id {image_id} ({type(e).__name__})") from None
    name = os.fspath(name) if not isinstance(name, str) else name
    if not isinstance(name, str) or not name:
        raise InputError(f"names: expected a non-empty str for image id {image_id}, got {name!r}")
    parts = name.replace("\\", "/").split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InputError(
            f"names: expected a relative path like 'aachen/aachen_000000_000019' for image id "
            f"{image_id}, got {name!r}"
        )
    return name


def _check_distinct(targets: list[tuple[int, str]]) -> None:
    """Two images must not share a mask file: the second would overwrite the first."""
    seen: dict[str, int] = {}
    for image_id, name in targets:
        key = name.replace("\\", "/")
        if key in seen:
            raise InputError(
                f"names: image ids {seen[key]} and {image_id} both have the name {name!r}; every labelled "
                "image needs its own name (its mask file would be overwritten)"
            )
        seen[key] = image_id


def export_masks(state, out_dir, names=None, allow_pending: bool = False) -> list[str]:
    """Write RIPU-style masks: one (H, W) uint8 PNG per labelled image, 255 = unlabelled.

    See ``ActiveLabelState.export_masks``.
    """
    pending = state.pending_rounds()
    if pending and not allow_pending:
        raise StateError(
            f"export_masks: labels of round(s) {pending} are pending; set them first or pass "
            "allow_pending=True (their windows are then written as 255)"
        )
    ids = state.labelled_image_ids().tolist()
    # Resolve every name before writing anything, so a bad name fails without partial output.
    targets = [(i, _name_of(names, i)) for i in ids]
    _check_distinct(targets)
    root = os.path.join(os.fspath(out_dir), "gtMask", "train")
    written = []
    for image_id, name in targets:
        path = os.path.join(root, *f"{name}_gtFine_labelIds.png".split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, encode_png(state.label_map(image_id)))
        written.append(path)
    return written


def export_regions(state, path, names=None) -> list[dict]:
    """Write the picks as a JSON list of regions for annotation tools; see the method."""
    h, w = state.image_size
    regions = []
    for r in range(1, state.num_rounds + 1):
        p = state.picks(r)
        for i, y, x, rad in zip(p["image_ids"].tolist(), p["ys"].tolist(), p["xs"].tolist(), p["radii"].tolist()):
            if y < 0:
                box = [0, 0, h - 1, w - 1]
            else:
                box = [max(y - rad, 0), max(x - rad, 0), min(y + rad, h - 1), min(x + rad, w - 1)]
            entry = {"image_id": i, "round": r, "center": [y, x], "radius": rad, "box": box}
            if names is not None:
                entry["name"] = _name_of(names, i)
            regions.append(entry)
    atomic_write(path, json.dumps(regions, indent=1).encode("utf-8"))
    return regions
