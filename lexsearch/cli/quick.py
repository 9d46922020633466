"""``lexsearch query TEXT`` answered by a running server before the command line loads.

A new ``lexsearch query`` process that a running ``lexsearch serve`` answers spends most of its time starting:
Click and the command modules are ~60 ms of it, more than the server's own answer. This module reads the few
options such a query can have with the standard library, asks the server for what ``lexsearch query`` prints
(``lexsearch.serve.wire``: no pathlib, typing or json to import) and writes it out. Whenever it is not sure (another option, an unusual token, a bad
value, no server, a note on stale files to print) it declines, and the full command line runs as if this module did not
exist: it alone validates, reports errors and searches.
"""

from __future__ import annotations

import math
import os
import sys

from lexsearch.serve import wire

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


def parse(argv: list[str]) -> dict | None:
    """The options of a plain ``[-v] query TEXT...`` command line, or None for anything else."""
    opts: dict = dict.fromkeys(_FLAGS.values(), False)
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
            # ASCII digits only ('²' is a digit to str.isdigit, not to int); a value over the limit goes to
            # the server, whose refusal hands the query to the full parser (the limit lives there).
            if not (value.isascii() and value.isdigit()) or int(value) < 1:
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


def _form(opts: dict) -> str:
    if opts["as_json"]:
        return "json"
    if opts["null"]:
        return "null"
    return "paths" if opts["as_paths"] else "table"


def answer_and_exit(argv: list[str]) -> None:
    """Print a running server's answer to the query ``argv`` names and end the process; return otherwise.

    The server renders what ``lexsearch query`` prints (``/api/search?format=``), so this process imports
    ``lexsearch.serve.wire`` alone (no pathlib, typing, json or socket module; see there). Anything but a
    plain answer of the right collection (none, an error, an older server, stale matches to note) declines:
    the full command asks again in its own words. A server found silent here is not waited for again."""
    opts = parse(argv)
    if opts is None:
        return
    folder = wire.collection_folder(opts["collection"])
    if folder is None:
        return
    params = {
        "q": " ".join(opts["words"]),
        "top": opts["top"],
        "rerank": "0" if opts["no_rerank"] else None,
        "min_score": opts["min_score"],
        "pruned": "1" if opts["pruned"] else None,
        "expand": "1" if opts["expand"] else None,
        "format": _form(opts),
    }
    try:
        target = "/api/search?" + wire.query_string(params)
    except UnicodeEncodeError:  # bytes that are not UTF-8 in the query: the full command says so
        return
    tag = wire.collection_tag(folder)
    silent = []
    for record in wire.records(folder):
        try:
            code, headers, body = wire.split(wire.ask_one(record["host"], record["port"], target, tag))
        except (OSError, ValueError):  # refused, silent, gone mid-answer
            silent.append(record)
            continue
        if code != 200 or headers.get(wire.COLLECTION_HEADER.lower()) != tag:
            break  # an error to report, another collection's server, an older server: the full command
        if headers.get(wire.STALE_HEADER.lower(), "0") != "0":
            break  # the note on stale files reads the collection's roots: the full command prints it
        notes = wire.decode_notes(headers.get(wire.NOTES_HEADER.lower()))
        _print(body, params["format"], record if opts["verbose"] else None, notes)
    if silent:
        from lexsearch.serve import discovery

        discovery.mark_silent(folder, silent)


def _print(body: bytes, form: str, record: dict | None, notes: list[str]) -> None:
    if record is not None:
        url = wire.url(record["host"], record["port"])
        _write(f"answered by the running server at {url} (pid {record['pid']})\n", sys.stderr)
    if notes:  # before the results, as the full command prints them (``wire.notes_text``)
        try:
            _write(wire.notes_text(notes), sys.stderr)
        except (OSError, ValueError):
            pass
    text: str | bytes = body if form in ("paths", "null") else body.decode("utf-8", "surrogateescape")
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
