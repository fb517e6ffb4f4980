"""Errors that end a run with one readable line (see :mod:`adverse_vision.cli`)."""

from __future__ import annotations


class RunStopped(RuntimeError):
    """A run stopped on purpose: the message says why, at which step, and what was kept."""


class DataError(ValueError):
    """Bad dataset input. The message names the file (or key) and the reason."""


class MissingPathError(DataError, FileNotFoundError):
    """A dataset file or folder that does not exist (a :class:`DataError` that is also a
    ``FileNotFoundError``)."""


class OfficialUnavailable(RuntimeError):
    """The official implementation to compare with cannot be built here (no PyTorch, no
    checkout, no official side for the method); the message says what is missing."""
