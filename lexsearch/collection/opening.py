"""``--collection`` to an open collection: a name or folder is the embedded store, ``qdrant://...`` Qdrant."""

from __future__ import annotations

import os
from typing import Any

QDRANT_SCHEME = "qdrant://"


def is_qdrant(spec: str | os.PathLike[str]) -> bool:
    """Whether ``--collection`` names a collection in Qdrant (``qdrant://HOST[:PORT]/NAME`` or
    ``qdrant:///ABS/DIR/NAME``). Standard library only: the CLI asks before anything heavy loads."""
    return os.fspath(spec).startswith(QDRANT_SCHEME)


def open_collection(spec: str | os.PathLike[str], readonly: bool = True, recreate: bool = False) -> Any:
    """The collection ``spec`` names, opened through the search interface (a context manager).

    ``readonly=False`` is the indexer's open: the embedded store takes its single-writer lock (Qdrant has
    none: every rank writes its own points).
    """
    if is_qdrant(spec):
        from lexsearch.collection.qdrant.store import QdrantCollection

        return QdrantCollection.open(os.fspath(spec), readonly=readonly, recreate=recreate)
    from lexsearch.collection.embedded import EmbeddedCollection

    return EmbeddedCollection.open(spec, readonly=readonly, recreate=recreate)


def describe(spec: str | os.PathLike[str]) -> str:
    """Where ``spec`` lives, as messages name it (a folder path, or the ``qdrant://`` address as given)."""
    if is_qdrant(spec):
        return os.fspath(spec)
    from lexsearch.index.paths import resolve

    return str(resolve(spec))
