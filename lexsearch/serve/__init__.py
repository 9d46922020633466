"""``lexsearch serve``: a local web page over one collection, to search it and see why each image matched.

    service = SearchService(collection, encoder)       # the collection open, the model warm
    Server(service, "127.0.0.1", 8765).serve()         # the page, its JSON API and the images by id

``app`` is the Starlette app (routes listed there), ``service`` what it does without HTTP, ``discovery`` the
record that lets ``lexsearch query`` find a running server, ``client`` the query handed to it, ``server``
uvicorn around the app.
"""

from lexsearch.serve.service import NotFound, SearchService

__all__ = ["NotFound", "SearchService"]
