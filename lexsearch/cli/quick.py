"""``lexsearch query TEXT`` answered by a running server before the command line loads.

A new ``lexsearch query`` process that a running ``lexsearch serve`` answers spends most of its time starting:
Click and the command modules are ~60 ms of it, more than the server's own answer. This module reads the few
options such a query can have with the standard library, asks the server (``lexsearch.serve.client``) and
prints what ``lexsearch query`` prints. Whenever it is not sure (another option, an unusual token, a bad
value, no server, a note to print) it declines, and the full command line runs as if this module did not
exist: it alone validates, reports errors and searches.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

from lexsearch.errors import LexsearchError

_FLAGS = {
    "--json": "as_json",
    "--paths": "as_paths",
    "-0": "null",
    "--null": "null",
    "--no-rerank": "no_rerank",
    "--pruned": "pruned",
    "--expand": "expand",
}
_VALUED = {"--collection", "--top", "--min-score", "--text-encoder"}


def parse(argv: list[str]) -> dict[str, Any] | None:
    """The options of a plain ``[-v] query TEXT...`` command line, or None for anything else."""
    opts: dict[str, Any] = dict.fromkeys(_FLAGS.values(), False)
    opts.update(verbose=False, collection="default", top=10, min_score=None, words=[])
    i = 0
    while i < len(argv) and argv[i] in ("-v", "--verbose"):
        opts["verbose"] = True
        i += 1
    if i >= len(argv) or argv[i] != "query":
        return None
    args = argv[i + 1 :]
    j = 0
    while j < len(args):
        token = args[j]
        j += 1
        if not token.startswith("-"):
            opts["words"].append(token)
            continue
        if token in _FLAGS:
            opts[_FLAGS[token]] = True
            continue
        name, eq, value = token.partition("=")
        if name not in _VALUED:
            return (
                None  # --help, --image, --model, "-night" as its own argument, "--", ...: the full parser's
            )
        if not eq:
            if j >= len(args):
                return None
            value = args[j]
            j += 1
        if name == "--collection":
            if not value:
                return None
            opts["collection"] = value
        elif name == "--top":
            if not value.isdigit() or int(value) < 1:
                return None
            opts["top"] = int(value)
        elif name == "--min-score":
            try:
                opts["min_score"] = float(value)
            except ValueError:
                return None
            if not math.isfinite(opts["min_score"]):
                return None
        elif value != "auto":  # --text-encoder: an explicit encoder is answered by the command itself
            return None
    if not opts["words"] or (opts["as_json"] and (opts["as_paths"] or opts["null"])):
        return None
    return opts


def _write(data: str | bytes, stream) -> None:
    if isinstance(data, bytes):
        stream.flush()
        stream.buffer.write(data)
    else:
        stream.write(data)


def answer_and_exit(argv: list[str]) -> None:
    """Print a running server's answer to the query ``argv`` names and end the process; return otherwise."""
    opts = parse(argv)
    if opts is None:
        return
    if opts["verbose"]:
        import logging

        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    from lexsearch.serve.client import search_via_server

    try:
        answer = search_via_server(
            opts["collection"],
            " ".join(opts["words"]),
            opts["top"],
            rerank=not opts["no_rerank"],
            min_score=opts["min_score"],
            pruned=opts["pruned"],
            expand=opts["expand"],
        )
    except (LexsearchError, OSError):
        return  # the full command reports it in its own words
    if answer is None:
        return
    results, info = answer
    if results.stale:
        return  # the note on stale files reads the collection's roots: the full command prints it
    from lexsearch.search import output

    if opts["verbose"]:
        _write(f"answered by the running server at {info.url} (pid {info.pid})\n", sys.stderr)
    if opts["as_json"]:
        import json

        text: str | bytes = json.dumps(output.results_to_json(results), indent=2) + "\n"
    elif opts["as_paths"] or opts["null"]:
        text = output.paths_bytes(results, end=b"\0" if opts["null"] else b"\n")
    elif results:
        text = output.format_table(results)
    else:
        text = "No image matches this query.\n"
    code = 0
    try:
        _write(text, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:  # | head: nothing more can reach it
        pass
    except OSError:
        code = 1
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code)  # nothing to tear down: the answer is out
