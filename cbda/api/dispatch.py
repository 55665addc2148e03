"""Backend dispatch that explains itself (STYLE 2).

Every backend module exposes ``NAME``, ``not_supported_reasons(device, dtype)``,
``score(logits, spec, image_ids)`` and ``open_round(plan)``. ``auto`` walks the preference
list of the tensors' device and quietly skips what cannot run, except that falling back for
want of a native module that should be there (an unbuilt source tree, a failed build) warns
once with the cause and the fix; a backend named by the user that cannot run raises with its
reasons; when nothing fits, the error lists every backend's reasons.

Before ``auto`` first uses a GPU backend in a process it checks it against the reference on
tiny inputs (``cbda.api.selfcheck``, well under 100 ms once compiled); a backend that
disagrees is skipped with one warning. ``CBDA_SELF_CHECK=0`` turns this off; a backend
named explicitly is never checked.
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings
from types import ModuleType

import torch

from .. import _native
from ..errors import BackendUnavailableError, InputError

__all__ = ["BACKEND_NAMES", "resolve", "explain", "auto_order"]

BACKEND_NAMES = ("auto", "reference", "cpu", "triton", "cuda")
_MODULES = {
    "reference": "cbda.backends.reference",
    "cpu": "cbda.backends.cpu",
    "triton": "cbda.backends.triton",
    "cuda": "cbda.backends.cuda",
}
# Preference per device type. On GPU, Triton comes first for now: its kernels' logic has been
# checked against the reference (under the Triton interpreter), while the CUDA extension has
# only been compiled, never run on a GPU. Once both are validated and measured on a GPU, the
# faster one goes first (issues 5 and 7). The reference is the last resort everywhere.
_AUTO = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpu", "reference")}
#: backend -> the native module it needs
_NATIVE = {"cpu": "_cpu", "cuda": "_cuda"}


#: device types whose backends ``auto`` checks against the reference before first use (the
#: GPU backends, which CI cannot run); tests widen it to exercise the mechanism on CPU
SELF_CHECK_DEVICE_TYPES = ("cuda",)
# (backend, device) -> passed; filled once per process
_checked: dict[tuple[str, str], bool] = {}
_check_lock = threading.Lock()


def self_check_enabled() -> bool:
    """``CBDA_SELF_CHECK=0`` turns the first-use check of ``auto`` off."""
    return os.environ.get("CBDA_SELF_CHECK", "1").strip().lower() not in ("0", "false", "no", "off")


def _passes_self_check(name: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``auto`` may use backend ``name`` on ``device``: the miniature check of
    ``cbda.api.selfcheck`` once per (backend, device) and process; on a mismatch a warning
    (once) and False, so that ``auto`` falls through to the next backend."""
    if device.type not in SELF_CHECK_DEVICE_TYPES or name == "reference" or not self_check_enabled():
        return True
    key = (name, str(device))
    with _check_lock:
        if key in _checked:
            return _checked[key]
        from .selfcheck import check_backend

        res = check_backend(name, device, dtype, mini=True, module=_module(name)[0])
        _checked[key] = res.ok
    if not res.ok:
        warnings.warn(
            f"cbda: backend {name!r} disagrees with the reference on {device} in the self-check "
            f"({'; '.join(res.failures[:3])}); backend='auto' uses the next backend instead in this process "
            "(python -m cbda.info --check for details; CBDA_SELF_CHECK=0 turns the check off)",
            RuntimeWarning,
            stacklevel=3,
        )
    return res.ok


def _module(name: str) -> tuple[ModuleType | None, str | None]:
    try:
        return importlib.import_module(_MODULES[name]), None
    except ImportError as err:
        return None, f"{_MODULES[name]} is not available ({err})"


def auto_order(device: torch.device) -> tuple[str, ...]:
    return _AUTO.get(device.type, ("reference",))


def reasons(name: str, device: torch.device, dtype: torch.dtype) -> list[str]:
    """Why backend ``name`` cannot run on this device/dtype ([] when it can)."""
    mod, err = _module(name)
    if mod is None:
        return [err]
    try:
        return list(mod.not_supported_reasons(device, dtype))
    except Exception as e:  # a probe must not crash dispatch
        return [f"availability check failed: {type(e).__name__}: {e}"]


def resolve(backend: str, device: torch.device, dtype: torch.dtype = torch.float32) -> ModuleType:
    """The backend module to use for tensors on ``device`` with ``dtype``.

    Raises:
        InputError: unknown backend name.
        BackendUnavailableError: a named backend cannot run here, or none can (with reasons).
    """
    if backend not in BACKEND_NAMES:
        raise InputError(f"backend: expected one of {', '.join(BACKEND_NAMES)}, got {backend!r}")
    if backend != "auto":
        why = reasons(backend, device, dtype)
        if why:
            raise BackendUnavailableError(
                f"backend {backend!r} cannot run on {device.type} tensors of {dtype}: " + "; ".join(why)
            )
        return _module(backend)[0]
    collected = {}
    for name in auto_order(device):
        why = reasons(name, device, dtype)
        if not why and not _passes_self_check(name, device, dtype):
            why = ["disagreed with the reference in the first-use self-check"]
        if not why:
            for skipped in collected:  # a fallback for want of an expected module is said once
                if skipped in _NATIVE:
                    _native.warn_missing(_NATIVE[skipped], fallback=name)
            return _module(name)[0]
        collected[name] = why
    lines = "\n".join(f"  {n}: {'; '.join(w)}" for n, w in collected.items())
    raise BackendUnavailableError(f"no backend can run on {device.type} tensors of {dtype}:\n{lines}")


def explain(device: torch.device, dtype: torch.dtype = torch.float32) -> list[tuple[str, list[str]]]:
    """(name, reasons) for each backend in auto order for ``device``, then the others."""
    names = list(auto_order(device)) + [n for n in _MODULES if n not in auto_order(device)]
    return [(n, reasons(n, device, dtype)) for n in names]
