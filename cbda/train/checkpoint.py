"""Checkpoints: model, optimiser, iteration, RNG states, sampler positions and the labelling
state in one file, written atomically (write, then rename), with a SHA-256 sidecar.

torch.load notices a truncated file but not flipped bytes inside a tensor (those load as wrong
weights), so `save` records the digest of the bytes it wrote in `<file>.sha256`, and `load`
checks it. `latest_good` walks the checkpoints newest first and skips unreadable ones with a
warning, so a save killed by a full disk or a crash costs one checkpoint, not the run.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import CheckpointError

#: keys of a training checkpoint (Trainer._payload)
PAYLOAD_KEYS = ("iteration", "model", "optimizer", "rng", "consumed", "state", "metrics", "config")
_TMP = re.compile(r"\.tmp-(\d+)$")


def rng_states() -> dict:
    out = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class _HashingWriter:
    """A write-only file object that hashes what passes through (torch.save writes its zip
    archive sequentially, so the digest is that of the file)."""

    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def write(self, data) -> int:
        self.sha.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            sha.update(block)
    return sha.hexdigest()


def save(path: str | Path, payload: dict) -> None:
    """Write `payload` to `path` atomically: a temporary file, its digest beside it, then a
    rename. A reader sees the old file or the whole new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    side_tmp = _sidecar(path).with_name(f"{_sidecar(path).name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            w = _HashingWriter(f)
            torch.save(payload, w)
            f.flush()
            os.fsync(f.fileno())
        side_tmp.write_text(w.sha.hexdigest() + "\n")
        os.replace(side_tmp, _sidecar(path))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        side_tmp.unlink(missing_ok=True)


def load(path: str | Path) -> dict:
    """The payload of a training checkpoint. Raises CheckpointError, naming the file, when it
    is missing, truncated, corrupt (digest mismatch) or not a cbda training checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    side = _sidecar(path)
    if side.is_file():
        want = side.read_text().strip()
        if want and _digest(path) != want:
            raise CheckpointError(f"checkpoint {path} is corrupt (its bytes do not match {side.name})")
    try:
        # our own file: it holds RNG states and bytes, so not weights_only
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, empty file, unpickling garbage: all one answer
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {first})") from None
    missing = [k for k in PAYLOAD_KEYS if not isinstance(payload, dict) or k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a cbda training checkpoint (no {', '.join(missing)})")
    return payload


def checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """The checkpoint files iter_NNNNNNN.pt of ckpt_dir, oldest first."""
    return sorted(Path(ckpt_dir).glob("iter_*.pt"))


def latest(ckpt_dir: str | Path) -> Path | None:
    """The checkpoint with the highest iteration in ckpt_dir (files iter_NNNNNNN.pt), or None."""
    files = checkpoints(ckpt_dir)
    return files[-1] if files else None


def latest_good(ckpt_dir: str | Path, warn: Callable[[str], None] = print) -> tuple[Path, dict]:
    """(path, payload) of the newest checkpoint in ckpt_dir that loads; each unreadable newer
    one is reported through `warn`, naming it. Raises CheckpointError when none loads."""
    files = checkpoints(ckpt_dir)
    if not files:
        raise CheckpointError(f"no checkpoint in {ckpt_dir}: nothing to resume or evaluate")
    for path in reversed(files):
        try:
            return path, load(path)
        except CheckpointError as e:
            warn(f"warning: {e}; trying the previous checkpoint")
    raise CheckpointError(f"no readable checkpoint in {ckpt_dir} ({len(files)} found, all unreadable)")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the `*.tmp-<pid>` files an atomic write left in `folder` when its process was
    killed (the pid no longer runs), and digest sidecars whose checkpoint is gone. Returns
    what was removed. Files of a live process are left alone."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TMP.search(p.name)
        if p.is_file() and m and not _pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p)
        elif p.is_file() and p.name.endswith(".pt.sha256") and not (folder / p.name[:-len(".sha256")]).exists():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def prune(ckpt_dir: str | Path, keep: int) -> None:
    """Keep the `keep` newest checkpoints (keep <= 0: keep all)."""
    if keep <= 0:
        return
    for f in checkpoints(ckpt_dir)[:-keep]:
        f.unlink(missing_ok=True)
        _sidecar(f).unlink(missing_ok=True)
