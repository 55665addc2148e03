"""Exceptions raised by cbda; each message names the argument and the expected form."""

from __future__ import annotations

__all__ = [
    "CbdaError",
    "InputError",
    "BackendUnavailableError",
    "StateError",
    "StateFileError",
    "NativeModuleWarning",
]


class CbdaError(Exception):
    """Base class of every error cbda raises on purpose."""


class InputError(CbdaError, ValueError):
    """An argument has the wrong shape, dtype, device, range or content."""


class BackendUnavailableError(CbdaError, RuntimeError):
    """A backend asked for by name cannot run here; the message says why."""


class StateError(CbdaError, ValueError):
    """An operation does not fit the labelling state (wrong round, missing labels, ...)."""


class StateFileError(InputError, StateError):
    """Saved state bytes or a state file are corrupt, truncated or not a cbda state.

    An ``InputError`` (the bytes are a bad argument) and a ``StateError`` (they are no usable
    state). ``path`` is the file (None for ``from_bytes``).
    """

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


class NativeModuleWarning(RuntimeWarning):
    """A native module cbda expected is missing, so ``backend="auto"`` falls back to a slower
    backend; the message names the cause and the fix (issued once per module and process)."""
