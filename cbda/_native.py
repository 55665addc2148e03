"""Loads the native modules without ever failing ``import cbda`` (STYLE 3).

Each module is imported on first use; the outcome (module or the reason it is missing) is
kept. A module that is expected but missing (cbda imported from a source tree where nothing
was built, a build that recorded a failure, a built module that does not load) makes
``backend="auto"`` fall back to a slower backend: ``warn_missing`` says so once per module,
naming the cause and the fix, and ``python -m cbda.info`` shows the same (``missing_cause``).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import warnings
from functools import lru_cache

from .errors import NativeModuleWarning

__all__ = ["load", "build_info", "load_error", "source_tree", "missing_cause", "warn_missing"]

_ERRORS: dict[str, str] = {}
_IMPORT_ERRORS: dict[str, str] = {}
_WARNED: set[str] = set()
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


@lru_cache(maxsize=None)
def build_info() -> dict:
    """The build record written by setup.py (empty when cbda runs from an unbuilt source tree)."""
    path = os.path.join(_PACKAGE_DIR, "_build_info.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _record(name: str) -> dict | None:
    modules = build_info().get("modules", {})
    return modules.get(name, modules.get(name.lstrip("_")))


def source_tree() -> str | None:
    """The repository root when cbda is imported from a source checkout (``setup.py`` and
    ``csrc/`` beside the package), else None. An editable install (``pip install -e .``)
    also imports from the tree, with its modules built in place."""
    root = os.path.dirname(_PACKAGE_DIR)
    if os.path.isfile(os.path.join(root, "setup.py")) and os.path.isdir(os.path.join(root, "csrc")):
        return root
    return None


@lru_cache(maxsize=None)
def load(name: str):
    """The native module ``cbda.<name>`` (``_cpu``/``_cuda``), or None; see load_error()."""
    try:
        return importlib.import_module(f"cbda.{name}")
    except Exception as err:  # ImportError, or an OSError from a missing shared library
        _IMPORT_ERRORS[name] = f"{type(err).__name__}: {err}"
        record = _record(name)
        if record and not record.get("built", False):
            _ERRORS[name] = f"not built: {record.get('reason', 'unknown reason')}"
        elif record and record.get("built"):
            _ERRORS[name] = f"built but failed to load: {err}"
        elif build_info():
            _ERRORS[name] = "not built (switched off at build time, e.g. CBDA_BUILD_CUDA=0 or no nvcc found)"
        elif source_tree() is not None:
            _ERRORS[name] = f"not built: cbda is imported from the source tree {source_tree()}, where nothing was built"
        else:
            _ERRORS[name] = f"not available ({type(err).__name__}: {err})"
        return None


def load_error(name: str) -> str | None:
    """Why ``load(name)`` returned None (None when it loaded)."""
    load(name)
    return _ERRORS.get(name)


def missing_cause(name: str) -> tuple[str, str] | None:
    """(cause, fix) when native module ``name`` should be here but did not load; None when it
    loaded or was never meant to be (switched off at build time: no build record for it)."""
    if load(name) is not None:
        return None
    tree = source_tree()
    rebuild = (
        f"build it in place with `pip install -e {tree}` (or `python setup.py build_ext --inplace` there), "
        "or run from outside the source tree so that the installed cbda is imported"
        if tree is not None
        else "reinstall cbda (`pip install .` from its source, or `pip install --force-reinstall cbda`)"
    )
    record = _record(name)
    if record is not None and not record.get("built", False):
        return (
            f"its build failed ({record.get('reason', 'unknown reason')})",
            "install what the build needs (a C++17 compiler; nvcc for _cuda) and " + rebuild,
        )
    if record is not None:
        return f"it was built but does not load ({_IMPORT_ERRORS.get(name, 'unknown error')})", rebuild
    if build_info():
        return None  # built without it on purpose (CBDA_BUILD_CPU=0, no nvcc for _cuda)
    if tree is not None and name == "_cpu":  # the C++ module is built by default; CUDA only with nvcc
        return f"cbda is imported from the source tree {tree}, where no native module was built", rebuild
    if tree is None:
        return f"the installed cbda has no build record and no module ({_IMPORT_ERRORS.get(name, '')})", rebuild
    return None


def warn_missing(name: str, fallback: str = "reference") -> None:
    """Warn once per process that ``auto`` falls back because ``name`` is missing (if it is
    expected; see ``missing_cause``)."""
    if name in _WARNED:
        return
    cause = missing_cause(name)
    if cause is None:
        return
    _WARNED.add(name)
    warnings.warn(
        f"cbda: native module cbda.{name} is missing, so backend='auto' uses the slower {fallback!r} "
        f"backend: {cause[0]}. Fix: {cause[1]}. `python -m cbda.info` shows what was built.",
        NativeModuleWarning,
        stacklevel=_caller_level(),
    )


def _caller_level() -> int:
    """``stacklevel`` of the first frame outside the cbda package: the user's call."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR + os.sep):
        frame, level = frame.f_back, level + 1
    return level
