"""File names as the ``images`` table stores them: losslessly, whatever bytes the OS gives."""

from __future__ import annotations

import os


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
