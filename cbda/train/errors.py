"""Errors of the training tools that are a user's to fix: the CLI prints them as one line on
stderr and exits with status 2, never with a traceback."""
from __future__ import annotations


class TrainError(Exception):
    """Base of the training tools' user-facing errors."""


class ConfigError(TrainError, ValueError):
    """A config file, key or override is invalid; the message names the key."""


class CheckpointError(TrainError):
    """No usable checkpoint: missing, unreadable, truncated or from another run."""


class DataFolderError(TrainError):
    """A folder cbda was asked to write into holds files cbda did not create."""


class RunError(TrainError):
    """A work dir lacks what a command needs (metrics.json for `report`) or holds it unreadable."""
