"""Loads the native modules without ever failing ``import cbda`` (STYLE 3).

Each module is imported on first use; the outcome (module or the reason it is missing) is
kept, and a module that was built but fails to load warns once with the cause.
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from functools import lru_cache

__all__ = ["load", "build_info", "load_error"]

_ERRORS: dict[str, str] = {}


@lru_cache(maxsize=None)
def build_info() -> dict:
    """The build record written by setup.py (empty when cbda runs from a source tree)."""
    path = os.path.join(os.path.dirname(__file__), "_build_info.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


@lru_cache(maxsize=None)
def load(name: str):
    """The native module ``cbda.<name>`` (``_cpu``/``_cuda``), or None; see load_error()."""
    try:
        return importlib.import_module(f"cbda.{name}")
    except Exception as err:  # ImportError, or an OSError from a missing shared library
        record = build_info().get("modules", {}).get(name.lstrip("_"), build_info().get("modules", {}).get(name))
        if record and not record.get("built", False):
            _ERRORS[name] = f"not built: {record.get('reason', 'unknown reason')}"
        elif record and record.get("built"):
            _ERRORS[name] = f"built but failed to load: {err}"
            warnings.warn(f"cbda: native module {name} failed to load ({err}); falling back", RuntimeWarning)
        else:
            _ERRORS[name] = f"not available ({type(err).__name__}: {err})"
        return None


def load_error(name: str) -> str | None:
    """Why ``load(name)`` returned None (None when it loaded)."""
    load(name)
    return _ERRORS.get(name)
