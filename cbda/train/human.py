"""Human labels in the training loop (`active.labels: human`).

At a round the trainer selects, then instead of copying ground truth it computes the model's
per-pixel prediction inside every picked window (the pre-annotation), checkpoints with the
round pending, exports the round for annotation tools and stops with instructions.
`cbda import` records a tool's export into the checkpoint's labelling state; `cbda train
--resume` then goes on. `cbda export` rewrites a round's files in other formats.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..annotate import RoundWindows, export_round, import_answers
from ..annotate.roundtrip import FORMATS, MANIFEST
from . import checkpoint as ckpt
from .errors import ConfigError, TrainError
from . import distributed as dist_utils
from .schema import DEFAULT_EXPORT, LABEL_SOURCES

__all__ = ["LABEL_SOURCES", "LabelsPendingError", "round_dir", "predicted_windows", "export_pending_round",
           "pending_message", "export_command", "import_command", "target_images"]

PREDICTED_FILE = "predicted.npy"


class LabelsPendingError(TrainError):
    """A round waits for human labels (a user-facing state, not a crash)."""


def round_dir(work_dir, round_index: int) -> Path:
    """Where round ``round_index`` is exported: <work_dir>/annotate/round_NNNN."""
    return Path(work_dir) / "annotate" / f"round_{int(round_index):04d}"


def target_images(dataset) -> tuple[list[Path], Path]:
    """(image files by id, the root their names are relative to) of a Cityscapes split."""
    root = Path(dataset.images[0]).parent.parent if dataset.images else Path(".")
    return list(dataset.images), root


def predicted_windows(model, dataset, windows: RoundWindows, prepare, autocast=None) -> np.ndarray:
    """(n, k, k) or (n, H, W) uint8: the model's argmax inside every picked window of a round.

    The logits are upsampled to the label size bilinearly with align_corners=True, as the
    selection scores them, one image at a time (so memory is one image's C×H×W floats).
    """
    was_training = model.training
    model.eval()
    out = np.full(windows.label_shape, 255, dtype=np.uint8)
    h, w = windows.image_size
    with torch.no_grad():
        for image_id in windows.image_ids.tolist():
            x = prepare(dataset[image_id]["image"].unsqueeze(0))
            if autocast is not None:
                with autocast():
                    logits = model(x)
            else:
                logits = model(x)
            up = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=True)
            pred = up.argmax(1)[0].to(torch.uint8).cpu().numpy()
            for row in windows.rows(image_id).tolist():
                y0, x0, y1, x1 = windows.boxes[row].tolist()
                dy, dx = windows.window_offsets(row)
                out[row, dy:dy + y1 - y0 + 1, dx:dx + x1 - x0 + 1] = pred[y0:y1 + 1, x0:x1 + 1]
    model.train(was_training)
    return out


def export_formats(active: dict) -> list[str]:
    """The formats written at a human round (`active.export`, default labelstudio, cvat,
    preview); raises ConfigError for an unknown one or a bad `active.image_url`."""
    fmts = active.get("export") or list(DEFAULT_EXPORT)
    fmts = [fmts] if isinstance(fmts, str) else list(fmts)
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise ConfigError(f"active.export: unknown format(s) {bad or fmts}; accepted: a list of {', '.join(FORMATS)}")
    url = active.get("image_url")
    if url is not None and not isinstance(url, str):
        raise ConfigError(f"active.image_url: expected null or a URL prefix string, got {url!r}")
    return fmts


def export_command(work_dir, round_index: int) -> str:
    return f"cbda export --work-dir {work_dir} --round {round_index} --format labelstudio"


def import_command(work_dir) -> str:
    return f"cbda import --work-dir {work_dir} <export file>"


def pending_message(work_dir, round_index: int, windows: RoundWindows | None = None) -> str:
    """What the user does next, for a round waiting for labels."""
    d = round_dir(work_dir, round_index)
    what = f" ({windows.n} windows in {windows.image_ids.shape[0]} images)" if windows is not None else ""
    serve = ("start it with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT="
             "<the folder above the images folder>, add a Local files storage on the images folder")
    try:
        local = json.loads((d / MANIFEST).read_text())["labelstudio_local_files"]
        serve = ("start it with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT="
                 f"{local['LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT']}, add a Local files storage on {local['storage_path']}")
    except (OSError, ValueError, KeyError):
        pass
    return "\n".join([
        f"round {round_index} waits for human labels{what}; exported to {d}:",
        f"  Label Studio: {serve}; new project with the labelling interface {d / 'labelstudio' / 'config.xml'}; "
        f"import {d / 'labelstudio' / 'tasks.json'} (or re-export with --image-url to serve the images yourself)",
        f"  CVAT: a task over the same images, upload annotations {d / 'cvat' / 'annotations.xml'} "
        "as 'CVAT 1.1'",
        f"  previews: {d / 'previews'}",
        "then export the annotations (Label Studio: JSON; CVAT: 'CVAT for images 1.1') and run",
        f"  {import_command(work_dir)}",
        f"  cbda train --work-dir {work_dir} --resume",
    ])


def export_pending_round(trainer, round_index: int) -> dict:
    """Pre-annotate, checkpoint and export round ``round_index`` (rank 0); returns the files."""
    active = trainer.cfg["active"]
    windows = RoundWindows(trainer.state, round_index)
    pred = None
    if trainer.rank == 0:
        pred = predicted_windows(trainer.model, trainer.tgt_train, windows, trainer.prepare,
                                 trainer.autocast if trainer.cfg["train"].get("bf16") else None)
    trainer.save_checkpoint()
    files: dict = {}
    if trainer.rank == 0:
        images, root = target_images(trainer.tgt_train)
        d = round_dir(trainer.work_dir, round_index)
        files = export_round(trainer.state, round_index, d, export_formats(active), images=images,
                             class_names=trainer.classes, image_root=root, predicted=pred,
                             image_url=active.get("image_url"))
        np.save(d / PREDICTED_FILE, pred)
    dist_utils.barrier()
    return files


def load_predicted(work_dir, windows: RoundWindows) -> np.ndarray | None:
    """The pre-annotation saved at the round, or None (then windows get their centre class)."""
    p = round_dir(work_dir, windows.round_index) / PREDICTED_FILE
    if not p.is_file():
        return None
    a = np.load(p, allow_pickle=False)
    return a if a.shape == windows.label_shape else None


def _latest_checkpoint(work_dir) -> tuple[Path, dict]:
    """(path, payload) of the checkpoint `cbda train --resume` would continue from."""
    return ckpt.latest_good(Path(work_dir) / "checkpoints")


def _catalog(cfg: dict, work_dir):
    from .data import Cityscapes
    from .trainer import resolve_roots

    _, tgt_root = resolve_roots(cfg, Path(work_dir))
    ds = Cityscapes(tgt_root, "train", None, int(cfg["data"]["num_classes"]), with_labels=False)
    return target_images(ds)


def export_from_work_dir(cfg: dict, work_dir, round_index: int | None, formats, out=None,
                         image_url: str | None = None, local_root=None) -> dict:
    """`cbda export`: write a recorded round of the latest checkpoint in other formats."""
    from .data.labels import class_names

    state = dist_utils.state_from_bytes(_latest_checkpoint(work_dir)[1]["state"])
    if round_index is None:
        pending = state.pending_rounds()
        round_index = pending[-1] if pending else state.num_rounds
    images, root = _catalog(cfg, work_dir)
    windows = RoundWindows(state, round_index)
    d = Path(out) if out else round_dir(work_dir, round_index)
    return export_round(state, round_index, d, formats, images=images,
                        class_names=class_names(int(cfg["data"]["num_classes"])), image_root=root,
                        predicted=load_predicted(work_dir, windows), image_url=image_url, local_root=local_root)


def import_into_work_dir(cfg: dict, work_dir, path, round_index: int | None = None, replace: bool = False):
    """`cbda import`: record a tool's export in the latest checkpoint's state (whole file or
    nothing; the checkpoint is rewritten atomically). Returns the ImportReport."""
    from .data.labels import class_names

    ck, payload = _latest_checkpoint(work_dir)
    state = dist_utils.state_from_bytes(payload["state"])
    images, root = _catalog(cfg, work_dir)
    report = import_answers(state, path, images=images, class_names=class_names(int(cfg["data"]["num_classes"])),
                            image_root=root, round_index=round_index, replace=replace)
    payload["state"] = dist_utils.state_to_bytes(state)
    ckpt.save(ck, payload)
    return report
