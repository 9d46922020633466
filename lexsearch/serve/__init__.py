"""``lexsearch serve``: a local web page over one collection, to search it and see why each image matched.

    service = SearchService(collection, encoder)       # the collection open, the model warm
    Server(service, "127.0.0.1", 8765).serve()         # the page, its JSON API and the images by id

``app`` is the Starlette app (routes listed there), ``service`` what it does without HTTP, ``discovery`` the
record that lets ``lexsearch query`` find a running server, ``client`` the query handed to it, ``server``
uvicorn around the app.

Importing this package is light (its names load on first use, PEP 562): ``lexsearch query`` imports
``client`` and ``discovery`` without the service's numpy and Pillow.
"""

from __future__ import annotations

_NAMES = {"NotFound": "lexsearch.serve.service", "SearchService": "lexsearch.serve.service"}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> object:
    if name in _NAMES:
        import importlib  # here: ``lexsearch query`` imports ``wire`` from this package, and nothing else

        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'lexsearch.serve' has no attribute {name!r}")
