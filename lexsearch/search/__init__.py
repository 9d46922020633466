"""The query path: parse, candidates over postings, exact re-rank, and the words behind every match.

    results = search(collection, encoder, 'white horse -night +beach', top=10)
    results[0].words      # [("horse", 0.21), ("white", 0.12), ...]: they sum to results[0].lexical

Stages (DESIGN.md, "Query path"), one module each:

1. ``parse``: :func:`parse_query` splits words, ``"phrases"``, ``+must`` and ``-exclude``;
   :func:`resolve_operators` maps the operator words to vocabulary columns through the encoder's tokenizer.
2. ``query``: the text is encoded once (or read from the collection's query cache); the strongest query terms
   go to
3. ``candidates``: term-at-a-time accumulation of ``q_t * postings_t`` into one float32 score array
   (``postings.PostingsIndex`` holds the postings in the layout the kernels want), the +/- hard filters, and
   the top ~1000 by a sampled threshold. A pruned mode (``PruneConfig``) trades exactness for speed.
4. ``rerank``: the exact lexical score of each candidate from its forward row and the *full* query vector,
   fused with the dense (FAISS) score. An image that holds none of the query's own words (only words the text
   encoder associates with them) is not a match unless ``expand`` is asked for: the honest empty answer
   instead of the nearest random images.
5. ``explain``: per result the contributions ``q_w * d_w`` of the very vectors that were scored, merged into
   readable words; they sum to the lexical score.
6. ``output``: the table, ``--paths`` and ``--json`` forms. The core never prints.
"""

from __future__ import annotations

from lexsearch.exports import lazy_exports

# Names load on first use (PEP 562): formatting a running server's answer (``output``, ``results``) must not
# import numpy and the search stages.
_NAMES = {
    "PostingsIndex": "lexsearch.search.postings",
    "PruneConfig": "lexsearch.search.candidates",
    "Result": "lexsearch.search.results",
    "Results": "lexsearch.search.results",
    "explain_text": "lexsearch.search.query",
    "format_paths": "lexsearch.search.output",
    "format_table": "lexsearch.search.output",
    "paths_bytes": "lexsearch.search.output",
    "results_to_json": "lexsearch.search.output",
    "load_encoder": "lexsearch.search.query",
    "search": "lexsearch.search.query",
    "search_by_image": "lexsearch.search.query",
}

__all__ = sorted(_NAMES)


__getattr__ = lazy_exports(__name__, _NAMES)
