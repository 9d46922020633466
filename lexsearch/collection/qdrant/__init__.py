"""A collection in Qdrant (the ``qdrant`` install extra): ``store`` (the search interface and the write
calls), ``points`` (image -> point, filters; no client calls) and ``build`` (``lexsearch index`` into it)."""
