"""``lexsearch query`` through a running server: the same results, without loading the model here."""

from __future__ import annotations

import logging
import os
from typing import Any

from lexsearch.serve import discovery

logger = logging.getLogger(__name__)


def search_via_server(
    collection: str | os.PathLike[str],
    text: str,
    top: int,
    *,
    rerank: bool = True,
    min_score: float | None = None,
    pruned: bool = False,
    expand: bool = False,
) -> tuple[Any, discovery.ServerInfo] | None:
    """(``Results`` as ``search`` returns them, the server) from a running ``lexsearch serve`` of
    ``collection``, or None when none answers (the caller searches itself)."""
    from lexsearch.index.store import Collection, resolve
    from lexsearch.search.query import Result, Results

    info = discovery.find(resolve(collection))
    if info is None:
        return None
    params = {"q": text, "top": top, "rerank": None if rerank else "0", "min_score": min_score}
    params.update(pruned="1" if pruned else None, expand="1" if expand else None)
    answer = discovery.remote_search(info, params)
    if answer is None:
        return None
    rows, stale = answer
    # Paths by id from the collection itself: the JSON's text form of a non-UTF-8 name is not the file's
    # name, and --paths must print the very bytes (a read of a few rows, no model).
    with Collection.open(collection, readonly=True) as col:
        paths = col.image_paths([r["id"] for r in rows])
    # The API's rows are the --json rows plus an id; ``rest`` (the unlisted words) is what the words miss.
    results = Results(
        Result(
            rank=r["rank"],
            image_id=r["id"],
            path=paths.get(r["id"], r["path"]),
            score=r["score"],
            lexical=r["lexical"],
            dense=r["dense"],
            words=[(w["word"], w["weight"]) for w in r["words"]],
            rest=max(0.0, r["lexical"] - sum(w["weight"] for w in r["words"])),
        )
        for r in rows
    )
    results.stale = stale
    return results, info
