"""Where the built-in dataset may be written, and writing it there without touching user files.

A dataset root is generated into only when it does not exist, is an empty folder, or holds
cbda's marker `.cbda_generated.json` (the generator settings). With the same settings the
folder is reused as it is. With other settings it is regenerated only when every file in it is
one cbda's generator wrote under the marker's settings (cbda made the whole folder); a folder
with any other file is refused, as is any non-empty folder without a marker. Both roots are
checked before anything is written, so a refused run leaves every file as it was.

The marker is written first with `"complete": false` and rewritten complete at the end, so a
killed generation leaves a folder that the next run recognises as cbda's and regenerates.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import DataFolderError
from . import synthetic

MARKER = ".cbda_generated.json"
GENERATOR_VERSION = 1  # bump when the generator's output changes


def generator_params(spec: dict, source_layout: str) -> dict:
    """The settings recorded in the marker (what makes two generated datasets identical).
    spec: the `data.generate` config section."""
    return {"seed": int(spec.get("seed", 0)), "size": [int(s) for s in spec["size"]],
            "num_source": int(spec["num_source"]), "num_train": int(spec["num_train"]),
            "num_val": int(spec["num_val"]), "source_layout": source_layout,
            "version": GENERATOR_VERSION}


def generated_files(params: dict, role: str) -> set[str]:
    """Relative paths of every file the generator writes for `role` ("source" or "target")
    under `params`."""
    out: set[str] = set()
    if role == "source":
        for i in range(params["num_source"]):
            out.update(synthetic.source_names(params["source_layout"], i))
    else:
        for split, n in (("train", params["num_train"]), ("val", params["num_val"])):
            for i in range(n):
                out.update(synthetic.cityscapes_names(split, i))
    return out


def _read_marker(root: Path) -> dict | None:
    try:
        data = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    # the first markers held the settings alone; later ones nest them with the state
    if isinstance(data, dict) and "params" not in data and "num_source" in data:
        data = {"params": data, "complete": True}
    return data if isinstance(data, dict) and isinstance(data.get("params"), dict) else None


def _files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir())


def plan_folder(root: Path, params: dict, role: str, key: str) -> str:
    """What to do with one dataset root: "keep" (already generated with these settings),
    "create" (missing or empty), or "replace" (cbda's own folder with other settings).
    Raises DataFolderError naming `key` and the path when the folder is not cbda's to write.
    Reads only."""
    if not root.exists():
        return "create"
    if not root.is_dir():
        raise DataFolderError(f"{key}: {root} is a file, not a folder; the built-in dataset needs "
                              f"a new or empty folder")
    files = _files_under(root)
    if not files:
        return "create"
    marker = _read_marker(root)
    if marker is None:
        raise DataFolderError(
            f"{key}: {root} is a non-empty folder that cbda did not generate (e.g. {files[0]}); "
            f"the built-in dataset is written only into a new or empty folder. Point {key} at "
            f"another folder, or set data.generate=null to train on the data that is there")
    if marker.get("complete") and marker["params"] == params:
        return "keep"
    try:
        ours = generated_files(marker["params"], role) | {MARKER}
    except (KeyError, TypeError, ValueError):
        ours = {MARKER}
    # a marker write killed half-way leaves its temporary file: ours too
    foreign = [f for f in files if f not in ours and not f.startswith(f"{MARKER}.tmp-")]
    if foreign:
        raise DataFolderError(
            f"{key}: {root} holds a dataset cbda generated with other settings, and files cbda did "
            f"not write (e.g. {foreign[0]}); it is left alone. Remove the folder or point {key} "
            f"at another one")
    return "replace"


def _write_marker(root: Path, params: dict, role: str, complete: bool) -> None:
    tmp = root / f"{MARKER}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"params": params, "role": role, "complete": complete}, indent=1))
    os.replace(tmp, root / MARKER)


def _remove_generated(root: Path, params: dict, role: str) -> None:
    """Delete the files an earlier generation wrote (checked by plan_folder to be all there
    is), then the folders they leave empty."""
    try:
        files = generated_files(params, role)
    except (KeyError, TypeError, ValueError):
        files = set()
    for rel in files:
        (root / rel).unlink(missing_ok=True)
    for tmp in root.glob(f"{MARKER}.tmp-*"):
        tmp.unlink(missing_ok=True)
    for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(d.iterdir()):
            d.rmdir()


def ensure_generated(spec: dict, source_root: str | Path | None, target_root: str | Path,
                     source_layout: str = "gtav", log=print) -> None:
    """Generate the built-in dataset into source_root (None: no source) and target_root unless
    it is already there with the same settings. Raises DataFolderError, before writing
    anything, when a root is not cbda's to write (see the module docstring).

    spec: {"seed", "size": [H, W], "num_source", "num_train", "num_val"} (data.generate)."""
    params = generator_params(spec, source_layout)
    roots = [(Path(target_root), "target", "data.target_root")]
    if source_root is not None:
        roots.insert(0, (Path(source_root), "source", "data.source_root"))
    plans = [(root, role, plan_folder(root, params, role, key)) for root, role, key in roots]
    todo = [(root, role, action) for root, role, action in plans if action != "keep"]
    if not todo:
        return
    log(f"generating the built-in dataset into {' and '.join(str(r) for r, _, _ in todo)} ...")
    size = tuple(params["size"])
    for root, role, action in todo:
        if action == "replace":
            _remove_generated(root, _read_marker(root)["params"], role)
        root.mkdir(parents=True, exist_ok=True)
        _write_marker(root, params, role, complete=False)
        if role == "source":
            synthetic.write_source(root, source_layout, params["num_source"], size, params["seed"])
        else:
            synthetic.write_cityscapes(root, "train", params["num_train"], size, params["seed"])
            synthetic.write_cityscapes(root, "val", params["num_val"], size, params["seed"])
        _write_marker(root, params, role, complete=True)


def check_generation(spec: dict, source_root: str | Path | None, target_root: str | Path,
                     source_layout: str = "gtav") -> None:
    """The checks of ensure_generated alone (nothing is written): raises DataFolderError when a
    root is not cbda's to write."""
    params = generator_params(spec, source_layout)
    if source_root is not None:
        plan_folder(Path(source_root), params, "source", "data.source_root")
    plan_folder(Path(target_root), params, "target", "data.target_root")
