"""File names as the ``images`` table stores them: losslessly, whatever bytes the OS gives; and where a
collection lives. Standard library only: a query handed to a running server reads paths with this alone."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from lexsearch import config
from lexsearch.errors import UsageError


def resolve(name_or_path: str | os.PathLike[str]) -> Path:
    """A bare name means ``LEXSEARCH_HOME/collections/NAME``; anything with a separator is a path."""
    s = os.fspath(name_or_path)
    if not s.strip():
        # '' would resolve to the collections folder itself and turn it into a collection.
        raise UsageError("The collection name is empty; give a name (e.g. --collection photos) or a folder.")
    if os.sep in s or (os.altsep and os.altsep in s) or s.startswith(".") or Path(s).is_absolute():
        return Path(s).expanduser().absolute()
    return config.collections_dir() / s


def db_path(path: str) -> str | bytes:
    """A path as stored: text when it is valid UTF-8, else its raw bytes.

    Names from old drives and NAS shares are often Latin-1; Python hands them over with surrogate escapes,
    which SQLite cannot store as text. Their bytes (``os.fsencode``) are stored instead (SQLite keeps a
    BLOB in a TEXT column as is, and compares it exactly), so the path round-trips without loss.
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return path


def py_path(value: str | bytes) -> str:
    """A stored path back as Python names it (``os.fsdecode``: surrogate escapes for undecodable bytes)."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def db_text(text: str | None) -> str | None:
    """Free text (an error message quoting a file name) made storable: undecodable bytes shown as \\xNN."""
    if text is None:
        return None
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def folder_digest(entries: Iterable[tuple[str, int, int]]) -> bytes:
    """A digest of a folder's image files, each given as (name, size, mtime_ns), in any order.

    The scan computes it over the files it lists in a folder, the collection over the rows it stores for
    that folder; equal digests mean an index run would find every file there unchanged and nothing gone.
    """
    import hashlib  # only an index run needs it, not a query's path lookups

    h = hashlib.blake2b(digest_size=16)
    for name, size, mtime_ns in sorted((os.fsencode(n), s, m) for n, s, m in entries):
        h.update(b"%s\0%d\0%d\n" % (name, size, mtime_ns))
    return h.digest()
