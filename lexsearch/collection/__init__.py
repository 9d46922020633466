"""Where a collection lives, behind one interface: what search, the page and the CLI need of it.

    from lexsearch.collection import open_collection
    with open_collection("photos") as col:                  # the embedded store (a folder on this machine)
        ...
    with open_collection("qdrant://db1:6333/photos") as col:   # a Qdrant server or cluster
        ...
    with open_collection("qdrant:///srv/qdrant/photos") as col:  # Qdrant's in-process engine, files in /srv/qdrant

The interface is :class:`lexsearch.collection.interface.SearchCollection` (candidates, forward rows, dense
scores, paths, metadata); its two implementations live in rooms of their own:

- ``lexsearch.collection.embedded``: SQLite + memory-mapped postings + FAISS (``lexsearch/index/store.py``),
  one machine, up to a few million images;
- ``lexsearch.collection.qdrant``: one Qdrant point per image (a sparse and a dense named vector, the file's
  facts as payload), sharded and replicated by Qdrant; the ``qdrant`` install extra.

Both give the same answers and explanations (tests/collection/test_conformance.py holds them equal).
"""

from __future__ import annotations

from lexsearch.exports import lazy_exports

_NAMES = {
    "SearchCollection": "lexsearch.collection.interface",
    "Where": "lexsearch.collection.interface",
    "Condition": "lexsearch.collection.interface",
    "open_collection": "lexsearch.collection.opening",
    "is_qdrant": "lexsearch.collection.opening",
    "describe": "lexsearch.collection.opening",
}

__all__ = sorted(_NAMES)


__getattr__ = lazy_exports(__name__, _NAMES)
