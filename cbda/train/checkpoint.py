"""Checkpoints: model, optimiser, iteration, RNG states, sampler positions and the labelling
state in one file, written atomically (write, then rename)."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


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


def save(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load(path: str | Path) -> dict:
    # our own file: it holds RNG states and bytes, so not weights_only
    return torch.load(path, map_location="cpu", weights_only=False)


def latest(ckpt_dir: str | Path) -> Path | None:
    """The checkpoint with the highest iteration in ckpt_dir (files iter_NNNNNNN.pt), or None."""
    files = sorted(Path(ckpt_dir).glob("iter_*.pt"))
    return files[-1] if files else None


def prune(ckpt_dir: str | Path, keep: int) -> None:
    """Keep the `keep` newest checkpoints (keep <= 0: keep all)."""
    if keep <= 0:
        return
    for f in sorted(Path(ckpt_dir).glob("iter_*.pt"))[:-keep]:
        f.unlink(missing_ok=True)
