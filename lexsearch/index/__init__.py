"""The image index: folder scan, the SQLite + FAISS collection store, and the incremental build.

Importing this package is light (numpy, Pillow, sqlite-utils); FAISS and the model load on first use.
"""

from lexsearch.index.build import IndexOptions, IndexSummary, Reporter, build_index, check_roots, model_meta
from lexsearch.index.store import Collection, resolve

__all__ = [
    "Collection", "IndexOptions", "IndexSummary", "Reporter", "build_index", "check_roots", "model_meta", "resolve"
]
