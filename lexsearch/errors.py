"""Typed errors raised by the core. The CLI turns them into one readable line and an exit code."""

from __future__ import annotations


class LexsearchError(Exception):
    """Base class: a problem the user can act on (message is shown as is, no traceback)."""

    exit_code = 1


class UsageError(LexsearchError):
    """Bad arguments or an empty/meaningless request."""

    exit_code = 2


class ModelError(LexsearchError):
    """A missing, unreadable or incompatible model / checkpoint."""


class DataError(LexsearchError):
    """Bad training / evaluation data (the message names the file and line)."""


class IndexError_(LexsearchError):
    """A missing, locked, corrupt or mismatched index (collection)."""


class NotBuiltError(LexsearchError):
    """A command that this version does not implement yet."""


class CollectionNotFoundError(IndexError_):
    """No collection with that name or path (it has never been indexed)."""


class ModelMismatchError(IndexError_):
    """The collection was written by another model; the message names the command that rebuilds it."""


class CollectionBusyError(IndexError_):
    """Another process is already indexing into the same collection."""
