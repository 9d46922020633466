"""Finding a running ``lexsearch serve`` for a collection, so ``lexsearch query`` can ask it.

A server writes a small JSON file under ``LEXSEARCH_HOME/servers/`` (host, port, pid, collection folder) and
removes it when it stops. A file is trusted only if its process is alive *and* the server says it serves the
same collection; a file whose process is gone is deleted. Standard library only: ``lexsearch query`` must
stay light when it hands a query to the server.

:func:`ask` sends the search straight to a recorded server, without asking ``/api/info`` first: every answer
of the server names its collection (``COLLECTION_HEADER``), so the answer itself says whether it came from
the right server. An answer slow to come is checked with ``/api/alive`` (answered without waiting for the
search), so a server that holds its port but never answers costs no more than the liveness check of
:func:`find` did. Anything unexpected (no such header: an older server; another collection) goes the way of
:func:`find` and :func:`remote_search`.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from pathlib import Path
from typing import Any, NamedTuple

from lexsearch import config
from lexsearch.errors import LexsearchError, UsageError
from lexsearch.serve import wire
from lexsearch.serve.wire import (  # noqa: F401  (the names this module has always offered)
    ALIVE_TIMEOUT_S,
    ANSWER_WAIT_S,
    COLLECTION_HEADER,
    EXACT_PATHS,
    NOTES_HEADER,
    PATHS_HEADER,
    PROBE_TIMEOUT_S,
    QUERY_TIMEOUT_S,
    STALE_HEADER,
    collection_tag,
)


def _debug(message: str, *args: Any) -> None:
    # logging loads only when there is something to log: a query answered by a server never imports it.
    import logging

    logging.getLogger(__name__).debug(message, *args)


class ServerInfo(NamedTuple):
    host: str
    port: int
    pid: int
    collection: str  # the collection's folder, absolute
    started_at: float = 0.0

    @property
    def url(self) -> str:
        return wire.url(self.host, self.port)


def servers_dir() -> Path:
    path = config.home() / "servers"
    path.mkdir(parents=True, exist_ok=True)
    return path


def register(host: str, port: int, collection: str | os.PathLike[str]) -> Path:
    """Record a server that is listening now; returns the file to pass to :func:`unregister`."""
    info = ServerInfo(host, int(port), os.getpid(), str(Path(collection).absolute()), time.time())
    path = servers_dir() / f"{info.pid}-{info.port}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info._asdict()))
    os.replace(tmp, path)  # a reader never sees half a file
    return path


def unregister(path: Path) -> None:
    Path(path).unlink(missing_ok=True)


_alive = wire.alive


class HTTPStatusError(OSError):
    """The server answered with an error status; ``body`` is what it said."""

    def __init__(self, code: int, body: bytes) -> None:
        super().__init__(f"HTTP {code}")
        self.code, self.body = code, body


def _get_json(url: str, timeout: float, headers: dict[str, str] | None = None) -> Any:
    """GET ``url`` on the local server and parse its JSON; ``headers`` receives the response's headers.

    HTTP/1.1 over a plain socket (``wire``) [choice, measured]: ``urllib.request`` (and the ``http.client``
    under it, which imports the ``email`` package) cost 40-60 ms to import in a fresh process, a fifth of a
    query handed to a server; this is the one request shape our own server answers (no proxy: it is on this
    machine, and an ``http_proxy`` setting must not send the query elsewhere).
    """
    parts = urllib.parse.urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    sock = wire.send(parts.hostname, parts.port or 80, target, timeout)
    try:
        raw = wire.read(sock)
    finally:
        sock.close()
    return _answer(raw, url, headers)


def _answer(raw: bytes, url: str, headers: dict[str, str] | None = None) -> Any:
    """The JSON of the HTTP answer ``raw``; ``headers`` receives its headers (names in lower case)."""
    code, got, body = wire.split(raw, urllib.parse.urlsplit(url).netloc)
    if headers is not None:
        headers.update(got)
    if code != 200:
        raise HTTPStatusError(code, body)
    return json.loads(body.decode())


def _records(want: str):
    """The recorded servers of the collection folder ``want`` whose process is alive (the records of stopped
    servers are deleted on the way)."""
    fields = ServerInfo._fields
    for record in wire.records(
        want, lambda path: _debug("removing the record of a stopped server: %s", path)
    ):
        try:
            yield ServerInfo(**{k: v for k, v in record.items() if k in fields})
        except TypeError:
            continue


def find(collection: str | os.PathLike[str], skip: tuple[ServerInfo, ...] = ()) -> ServerInfo | None:
    """A live server for ``collection`` (its folder), or None; the servers in ``skip`` are not asked."""
    want = str(Path(collection).absolute())
    for info in _records(want):
        if info in skip:
            continue
        try:
            answer = _get_json(info.url + "/api/info", PROBE_TIMEOUT_S)
        except (OSError, ValueError) as exc:
            _debug("server %s does not answer (%s)", info.url, exc)
            continue
        if isinstance(answer, dict) and answer.get("collection") == want:
            return info
    return None


# Servers of a collection folder that did not answer ``lexsearch.cli.quick`` in this process (host, port, pid).
_SILENT: dict[str, tuple[ServerInfo, ...]] = {}


def mark_silent(folder: str, records: list[dict]) -> None:
    """Tell :func:`ask` that these servers' records (``wire.records``) did not answer just now."""
    fields = ServerInfo._fields
    _SILENT[folder] = tuple(ServerInfo(**{k: v for k, v in r.items() if k in fields}) for r in records)


def _search_target(params: dict[str, Any]) -> str:
    return "/api/search?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})


class AnswerRows(list):
    """The rows of a search answer and the search's notes (``NOTES_HEADER``; ``Results.notes``)."""

    notes: list[str] = []  # replaced per answer, never appended to


def _rows(rows: Any, headers: dict[str, str]) -> AnswerRows:
    out = AnswerRows(rows)
    out.notes = wire.decode_notes(headers.get(NOTES_HEADER.lower()))
    return out


def _stale(headers: dict[str, str]) -> int:
    stale = headers.get(STALE_HEADER.lower(), "0")
    return int(stale) if stale.isdigit() else 0


def _failed(info: ServerInfo, exc: HTTPStatusError) -> LexsearchError:
    """The error a server's error answer stands for: a usage error (400) as a local search would raise it."""
    try:
        message = json.loads(exc.body.decode()).get("error") or str(exc)
    except (ValueError, AttributeError):
        message = str(exc)
    if exc.code == 400:
        return UsageError(message)
    return LexsearchError(f"the server at {info.url} failed: {message}")


def remote_search(info: ServerInfo, params: dict[str, Any]) -> tuple[list[dict[str, Any]], int] | None:
    """``/api/search`` on a running server: (rows, stale matches left out), or None when it cannot be reached
    (the caller searches itself).

    A query the server rejects (a usage error) raises the same :class:`UsageError` a local search would.
    """
    headers: dict[str, str] = {}
    try:
        rows = _get_json(info.url + _search_target(params), QUERY_TIMEOUT_S, headers)
        return _rows(rows, headers), _stale(headers)
    except HTTPStatusError as exc:
        raise _failed(info, exc) from None
    except (OSError, ValueError) as exc:
        _debug("server %s went away (%s); searching here", info.url, exc)
        return None


def ask(
    collection: str | os.PathLike[str], params: dict[str, Any]
) -> tuple[ServerInfo, list[dict[str, Any]], int, bool] | None:
    """(the server, rows, stale matches left out, whether the rows' paths are the stored names exactly) of
    ``/api/search`` on a running server of ``collection``, or None when none answers (the caller searches
    itself). As :func:`find` then :func:`remote_search`,
    without the liveness check's round trip: the search goes straight to each recorded server whose process
    is alive, and its answer counts only if it names this collection. A usage error raises as in
    :func:`remote_search`."""
    want = str(Path(collection).absolute())
    tag, target = collection_tag(want), _search_target(params)
    silent = _SILENT.pop(want, ())  # found silent by lexsearch.cli.quick in this process: not asked again
    failed: list[ServerInfo] = []
    for info in _records(want):
        if info in silent:
            continue
        try:
            raw = _ask_one(info, target, tag)
        except (OSError, ValueError) as exc:  # refused, silent, gone mid-answer: what find's check finds
            _debug("server %s does not answer (%s)", info.url, exc)
            failed.append(info)
            continue
        headers: dict[str, str] = {}
        try:
            rows, error = _answer(raw, info.url, headers), None
        except HTTPStatusError as exc:
            rows, error = None, exc
        except ValueError as exc:
            _debug("server %s answered no JSON (%s)", info.url, exc)
            failed.append(info)
            continue
        if headers.get(COLLECTION_HEADER.lower()) != tag:
            break  # another collection's server on that port, or an older server: ask the way find does
        if error is not None:
            raise _failed(info, error) from None
        return info, _rows(rows, headers), _stale(headers), headers.get(PATHS_HEADER.lower()) == EXACT_PATHS
    info = find(want, skip=(*failed, *silent))
    if info is None:
        return None
    answer = remote_search(info, params)
    return None if answer is None else (info, *answer, False)


def _ask_one(info: ServerInfo, target: str, tag: str) -> bytes:
    return wire.ask_one(info.host, info.port, target, tag)
