"""Domain errors. Everything a user can cause raises one of these; the CLI turns them into one line.

Each message says what went wrong, where, and how to fix it. Tracebacks are reserved for bugs.
"""

from __future__ import annotations


class FtError(Exception):
    """Base class of every error a user can cause."""

    exit_code = 1


class NotFound(FtError):
    """A name or id that the catalog does not know."""


class Conflict(FtError):
    """A name that is already taken, or a state that forbids the action."""


class InvalidInput(FtError):
    """Bad flags, bad files, impossible hyper-parameters."""

    exit_code = 2


class CatalogOutdated(FtError):
    """The database is at an older (or unknown) schema revision."""


class ServiceUnavailable(FtError):
    """The database or the broker cannot be reached."""


class JobFailed(FtError):
    """A job that was waited on ended in failure or was cancelled."""


class ArtifactDamaged(FtError):
    """A stored artifact whose files no longer match the sha256 the catalog recorded."""
