"""``lexsearch query`` through a running server: the same results, without loading the model here.

Up to the answer this needs the standard library only (no numpy, no torch, not the store): the server is
found through its discovery record, asked over HTTP, and the paths of the rows it returns are read from the
collection's ``images`` table with ``sqlite3``. The search is sent to the recorded server directly, its answer
checked to name the collection (``discovery.ask``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lexsearch.index.paths import py_path, resolve
from lexsearch.serve import discovery

DB_NAME = "index.db"  # the collection's database (``store.DB_NAME``; the store is not imported here)
_CHUNK = 5000


def image_paths(folder: Path, image_ids: Iterable[int]) -> dict[int, str]:
    """Paths of 'ok' images by id, read straight from the collection's database (as ``Collection.image_paths``).

    A name stored as bytes (not UTF-8) comes back as Python names it, so ``--paths`` prints the very bytes.
    """
    db = Path(folder) / DB_NAME
    ids = sorted({int(i) for i in image_ids})
    if not ids or not db.is_file():
        return {}
    import sqlite3  # only here: an answer whose paths are exact needs none of it (~8 ms to import)

    out: dict[int, str] = {}
    conn = sqlite3.connect(str(db), timeout=60.0)
    try:
        conn.execute("PRAGMA busy_timeout = 60000")
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            q = f"SELECT id, path FROM images WHERE id IN ({','.join('?' * len(chunk))}) AND status = 'ok'"
            out.update((i, py_path(p)) for i, p in conn.execute(q, chunk))
    finally:
        conn.close()
    return out


def ask_server(
    collection: str | os.PathLike[str],
    text: str,
    top: int,
    *,
    rerank: bool = True,
    min_score: float | None = None,
    pruned: bool = False,
    expand: bool = False,
) -> tuple[list[dict[str, Any]], int, discovery.ServerInfo] | None:
    """(rows, stale matches left out, the server) from a running ``lexsearch serve`` of ``collection``, or
    None when none answers. Each row is the API's (the ``--json`` row plus ``id``), with ``path`` the exact
    stored name. Standard library only."""
    folder = resolve(collection)
    params = {"q": text, "top": top, "rerank": None if rerank else "0", "min_score": min_score}
    params.update(pruned="1" if pruned else None, expand="1" if expand else None)
    answer = discovery.ask(folder, params)
    if answer is None:
        return None
    info, rows, stale, exact = answer
    if not exact:
        # Paths by id from the collection itself: the JSON's text form of a non-UTF-8 name is not the file's
        # name, and --paths must print the very bytes (a read of a few rows, no model).
        paths = image_paths(folder, [r["id"] for r in rows])
        for r in rows:
            r["path"] = paths.get(r["id"], r["path"])
    return rows, stale, info


def search_via_server(
    collection: str | os.PathLike[str], text: str, top: int, **options: Any
) -> tuple[Any, discovery.ServerInfo] | None:
    """(``Results`` as ``search`` returns them, the server) from a running ``lexsearch serve`` of
    ``collection``, or None when none answers (the caller searches itself). ``options``: those of
    :func:`ask_server`."""
    answer = ask_server(collection, text, top, **options)
    if answer is None:
        return None
    rows, stale, info = answer
    results = results_from_rows(rows)
    results.stale = stale
    results.notes = list(getattr(rows, "notes", ()))  # the server's Results.notes, from its answer's header
    return results, info


def results_from_rows(rows: list[dict[str, Any]]) -> Any:
    """``Results`` of the API's rows (the --json rows plus an id; ``rest``, the unlisted words, is what the
    listed words miss of the lexical score): what ``lexsearch query`` prints from a server's answer."""
    from lexsearch.search.results import Result, Results

    return Results(
        Result(
            rank=r["rank"],
            image_id=r["id"],
            path=r["path"],
            score=r["score"],
            lexical=r["lexical"],
            dense=r["dense"],
            words=[(w["word"], w["weight"]) for w in r["words"]],
            rest=max(0.0, r["lexical"] - sum(w["weight"] for w in r["words"])),
            taken=r.get("taken"),
        )
        for r in rows
    )
