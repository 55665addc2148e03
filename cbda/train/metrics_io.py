"""Run outputs in the work dir: metrics.json (atomic), metrics.csv, TensorBoard scalars.

metrics.json = {"name", "strategy", "budget", "classes": [...],
                "rounds": [{"round", "iteration", "class_histogram": {class: pixels},
                            "labelled_pixels", "labelled_fraction", "imbalance_score",
                            "num_picks", "miou_before" (when evaluated before the round)}],
                "evals": [{"iteration", "miou", "min_iou"}],
                "final": {"miou", "per_class_iou": {class: iou %}, "min_iou", "min_class",
                          "class_pixels", "iteration"},
                "environment": {"torch", "threads", "device", "selection_backend", "world_size"},
                "seconds"}
"""
from __future__ import annotations

import csv
import json
import math
import os
import warnings
from pathlib import Path

from .errors import RunError


def _clean(obj):
    # JSON has no NaN: write null
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: str | Path, data) -> None:
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(_clean(data), indent=2))
    os.replace(tmp, path)


def read_metrics(run: str | Path) -> dict:
    """metrics.json of a run dir (or the file itself)."""
    p = Path(run)
    p = p / "metrics.json" if p.is_dir() else p
    if not p.is_file():
        raise RunError(f"no metrics.json at {p}: is it the work dir of a finished cbda train run?")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RunError(f"{p} is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise RunError(f"{p} is not a cbda metrics.json (top level is {type(data).__name__})")
    return data


class ScalarLog:
    """Training scalars to metrics.csv (one row per logged iteration) and TensorBoard (if the
    tensorboard package is installed; otherwise a one-time warning)."""

    FIELDS = ("iteration", "lr", "loss", "loss_source", "loss_target", "loss_lc", "loss_nl",
              "sec_per_iter")

    def __init__(self, work_dir: str | Path, enabled: bool = True, start_iteration: int = 0):
        self.enabled = enabled
        self.csv_path = Path(work_dir) / "metrics.csv"
        self.tb = None
        if not enabled:
            return
        if start_iteration > 0 and self.csv_path.is_file():
            # resumed run: drop rows past the checkpoint so the CSV matches a straight run
            with open(self.csv_path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= start_iteration]
            self._write_rows(rows)
        elif not self.csv_path.is_file() or start_iteration == 0:
            self._write_rows([])
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(Path(work_dir) / "tensorboard"), purge_step=start_iteration or None)
        except Exception as e:  # tensorboard is an optional extra
            warnings.warn(f"TensorBoard logging disabled ({e}); install cbda[train] for it")

    def _write_rows(self, rows):
        with open(self.csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, self.FIELDS)
            w.writeheader()
            w.writerows(rows)

    def scalars(self, iteration: int, values: dict, csv_row: bool = True) -> None:
        if not self.enabled:
            return
        if self.tb is not None:
            for k, v in values.items():
                if v is not None:
                    self.tb.add_scalar(k, v, iteration)
        if csv_row:
            row = {k: values.get(k) for k in self.FIELDS}
            row["iteration"] = iteration
            with open(self.csv_path, "a", newline="") as f:
                csv.DictWriter(f, self.FIELDS).writerow(row)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
