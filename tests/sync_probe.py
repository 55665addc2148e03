"""Counting host synchronisations of a backend's round driver on a CPU-only machine.

On a GPU every device-to-host read (``.item()``, ``.tolist()``, ``.cpu()``, a tensor used as
a Python bool/int/float, a boolean-mask index or ``nonzero`` whose output size depends on the
data, ``torch.cuda.synchronize``) stalls the host until the device catches up. The backends
must make at most one such read per batch (``RoundCounters.host_read``) and one set in
``finish``. On the CPU none of these stall, so this probe patches them and counts every call
made from the driver's own files (``cbda/backends/``, ``cbda/triton/``), whatever device the
tensor is on: it over-counts (host-only bookkeeping through these calls counts too), it never
under-counts the listed operations. On a GPU, ``torch.cuda.set_sync_debug_mode("warn")`` is the
independent check (bench/bench_gpu.py).
"""

from __future__ import annotations

import os
import sys
from collections import Counter

import torch

_DRIVER_DIRS = tuple(
    os.path.join(os.path.dirname(os.path.abspath(__import__("cbda").__file__)), d) + os.sep
    for d in ("backends", "triton")
)

_METHODS = ("item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__")


def _from_driver(depth: int = 2) -> str | None:
    """The driver frame (file:line) that made the call, or None."""
    f = sys._getframe(depth)
    while f is not None:
        fn = f.f_code.co_filename
        if fn.startswith(_DRIVER_DIRS):
            return f"{os.path.basename(fn)}:{f.f_lineno}"
        if "torch" + os.sep not in fn and not fn.endswith("sync_probe.py"):
            return None  # called from test or API code, not the driver
        f = f.f_back
    return None


def _is_bool_index(idx) -> bool:
    items = idx if isinstance(idx, tuple) else (idx,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class SyncProbe:
    """``with SyncProbe() as probe: ...``; then ``probe.total`` and ``probe.sites`` (a
    Counter of driver file:line -> calls)."""

    def __init__(self):
        self.sites: Counter = Counter()
        self._saved: list = []
        self._active = True

    @property
    def total(self) -> int:
        return sum(self.sites.values())

    def _count(self):
        if not self._active:
            return
        self._active = False  # calls made while counting (e.g. inside tolist) are not new ones
        try:
            site = _from_driver(3)
        finally:
            self._active = True
        if site is not None:
            self.sites[site] += 1

    def _wrap(self, owner, name, pred=None):
        orig = getattr(owner, name)
        probe = self

        def wrapper(*args, **kwargs):
            if probe._active and (pred is None or pred(*args, **kwargs)):
                probe._count()
                probe._active = False
                try:
                    return orig(*args, **kwargs)
                finally:
                    probe._active = True
            return orig(*args, **kwargs)

        self._saved.append((owner, name, orig))
        setattr(owner, name, wrapper)

    def __enter__(self):
        for m in _METHODS:
            self._wrap(torch.Tensor, m)
        self._wrap(torch.Tensor, "__getitem__", lambda t, idx: _is_bool_index(idx))
        self._wrap(torch.Tensor, "to", lambda t, *a, **k: _to_cpu(a, k))
        self._wrap(torch, "nonzero")
        self._wrap(torch, "masked_select")
        self._wrap(torch.cuda, "synchronize")
        return self

    def __exit__(self, *exc):
        for owner, name, orig in reversed(self._saved):
            setattr(owner, name, orig)
        self._saved.clear()
        return False


def _to_cpu(args, kwargs) -> bool:
    dev = kwargs.get("device", args[0] if args else None)
    return (isinstance(dev, str) and dev.startswith("cpu")) or (isinstance(dev, torch.device) and dev.type == "cpu")
