"""The image index: folder scan, the SQLite collection store (posting and FAISS segment files), and the
incremental build.

Importing this package is light: its names load on first use (PEP 562), so a query process that needs only
the store does not import Pillow and the build; FAISS and the model load on first use too.
"""

from __future__ import annotations

from lexsearch.exports import lazy_exports

_NAMES = {
    "Collection": "lexsearch.index.store",
    "resolve": "lexsearch.index.paths",
    "IndexOptions": "lexsearch.index.build",
    "IndexSummary": "lexsearch.index.build",
    "Reporter": "lexsearch.index.build",
    "build_index": "lexsearch.index.build",
    "check_roots": "lexsearch.index.build",
    "model_meta": "lexsearch.index.build",
}

__all__ = sorted(_NAMES)


__getattr__ = lazy_exports(__name__, _NAMES)
