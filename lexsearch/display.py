"""How file names and user text are shown: safe on a terminal, valid UTF-8, nothing lost silently.

File names are bytes to the OS; Python holds the bytes that are not UTF-8 (Latin-1 names from old drives and
NAS shares) as surrogate escapes, which cannot be printed or written as UTF-8 JSON. A pasted query or a file
name can also hold control characters (a newline, an escape sequence) that would move the cursor or
recolour the terminal. Standard library only: the CLI imports this for every message.
"""

from __future__ import annotations


def utf8_text(text: str) -> str:
    """``text`` as valid UTF-8: the bytes of a name that are not UTF-8 written as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def shown(text: str) -> str:
    """``text`` safe to print on a terminal: as :func:`utf8_text`, and control characters as ``\\n``, ``\\x1b``."""
    text = utf8_text(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
