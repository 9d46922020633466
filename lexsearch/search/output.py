"""Results as the CLI prints them: a table, ``--paths`` and ``--json``. Returns strings; never prints."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from lexsearch.display import shown, utf8_text
from lexsearch.search.results import Result


def results_to_json(results: Sequence[Result], with_ids: bool = False) -> list[dict[str, Any]]:
    """The ``--json`` shape: ``[{"rank", "path", "score", "words": [{"word", "weight"}]}]`` (+ details).

    ``with_ids`` adds each image's collection ``id`` (the web API's shape: images are fetched by id).
    """
    out = []
    for r in results:
        row: dict[str, Any] = {"id": r.image_id} if with_ids else {}
        row.update(
            rank=r.rank,
            path=utf8_text(r.path),  # JSON is UTF-8 text: a non-UTF-8 byte of a name shows as \xNN
            score=round(r.score, 6),
            lexical=round(r.lexical, 6),
            dense=None if r.dense is None else round(r.dense, 6),
            words=[{"word": w, "weight": round(v, 6)} for w, v in r.words],
        )
        if r.taken is not None:  # sorted by date: the date each result is sorted by
            row["taken"] = r.taken
        out.append(row)
    return out


# What ``lexsearch query`` prints (``--json``, ``--paths``, ``-0``, or the table) for results: ``render``.
FORMATS = ("table", "json", "paths", "null")


def render(results: Sequence[Result], form: str) -> bytes:
    """The very bytes ``lexsearch query`` prints for ``results`` in ``form`` (one of FORMATS); the text
    forms UTF-8 encoded (a server renders them for a query process, which prints them as text)."""
    if form == "json":
        import json

        return (json.dumps(results_to_json(results), indent=2) + "\n").encode("utf-8", "surrogateescape")
    if form in ("paths", "null"):
        return paths_bytes(results, end=b"\0" if form == "null" else b"\n")
    if form != "table":
        raise ValueError(f"no such output form: {form!r}")
    text = format_table(results) if results else "No image matches this query.\n"
    return text.encode("utf-8", "surrogateescape")


def format_paths(results: Sequence[Result]) -> str:
    return "".join(f"{r.path}\n" for r in results)


def paths_bytes(results: Sequence[Result], end: bytes = b"\n") -> bytes:
    """The ``--paths`` output: each path's raw bytes (the very file, even where the name is not UTF-8), each
    followed by ``end`` (``b"\\0"`` for ``xargs -0``: names may hold newlines)."""
    return b"".join(os.fsencode(r.path) + end for r in results)


def format_table(results: Sequence[Result]) -> str:
    """Rank, score, path and the words with their contributions; ``+x`` is what the unlisted words add."""
    lines = [f"{'#':>3}  {'score':>6}  path"] if results else []
    for r in results:
        words = ", ".join(f"{w} {v:.3f}" for w, v in r.words)
        if r.rest > 0.0005:
            words += f" (+{r.rest:.3f} more)"
        taken = f"  ({r.taken.replace('T', ' ')})" if r.taken else ""
        lines.append(f"{r.rank:>3}  {r.score:6.3f}  {shown(r.path)}{taken}")
        lines.append(f"{'':>3}  {'':>6}  {words or '(no shared words)'}")
    return "\n".join(lines) + ("\n" if lines else "")
