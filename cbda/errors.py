"""Exceptions raised by cbda; each message names the argument and the expected form."""

__all__ = ["CbdaError", "InputError", "BackendUnavailableError", "StateError"]


class CbdaError(Exception):
    """Base class of every error cbda raises on purpose."""


class InputError(CbdaError, ValueError):
    """An argument has the wrong shape, dtype, device, range or content."""


class BackendUnavailableError(CbdaError, RuntimeError):
    """A backend asked for by name cannot run here; the message says why."""


class StateError(CbdaError, ValueError):
    """An operation does not fit the labelling state (wrong round, missing labels, ...)."""
