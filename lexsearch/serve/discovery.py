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


def _debug(message: str, *args: Any) -> None:
    # logging loads only when there is something to log: a query answered by a server never imports it.
    import logging

    logging.getLogger(__name__).debug(message, *args)


# How long a liveness check may take: a live local server answers /api/info in a millisecond or two; a
# process that holds the port but does not answer must not delay the query by more than this.
PROBE_TIMEOUT_S = 1.0
# :func:`ask`: how long the answer may take before the server is asked whether it is alive, and how long that
# question may take (together no longer than PROBE_TIMEOUT_S: a silent server delays a query no more than
# find's check of it does).
ANSWER_WAIT_S = 0.5
ALIVE_TIMEOUT_S = PROBE_TIMEOUT_S - ANSWER_WAIT_S
# Every answer of a server names its collection folder here (percent-encoded bytes of the path).
COLLECTION_HEADER = "Lexsearch-Collection"
# Matches left out of an answer because their file is gone (a re-index is due); the JSON stays the --json list.
STALE_HEADER = "Lexsearch-Stale-Results"
# An answer whose every ``path`` is the very name stored (all UTF-8) says so: the client need not read them.
PATHS_HEADER = "Lexsearch-Paths"
EXACT_PATHS = "exact"
QUERY_TIMEOUT_S = 60.0


class ServerInfo(NamedTuple):
    host: str
    port: int
    pid: int
    collection: str  # the collection's folder, absolute
    started_at: float = 0.0

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"  # bound to every interface: loopback reaches it
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    except OSError:
        return False
    return True


class HTTPStatusError(OSError):
    """The server answered with an error status; ``body`` is what it said."""

    def __init__(self, code: int, body: bytes) -> None:
        super().__init__(f"HTTP {code}")
        self.code, self.body = code, body


def _get_json(url: str, timeout: float, headers: dict[str, str] | None = None) -> Any:
    """GET ``url`` on the local server and parse its JSON; ``headers`` receives the response's headers.

    HTTP/1.1 over a plain socket [choice, measured]: ``urllib.request`` (and the ``http.client`` under it,
    which imports the ``email`` package) cost 40-60 ms to import in a fresh process, a fifth of a query handed
    to a server; this is the one request shape our own server answers (no proxy: it is on this machine, and an
    ``http_proxy`` setting must not send the query elsewhere).
    """
    with _send(url, timeout) as sock:
        return _answer(_read(sock), url, headers)


def _send(url: str, timeout: float):
    """A socket with the GET request for ``url`` sent (its timeout: ``timeout``)."""
    import socket

    parts = urllib.parse.urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout)
    try:
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: application/json\r\n"
            "Connection: close\r\n\r\n".encode("ascii")
        )
    except BaseException:
        sock.close()
        raise
    return sock


def _read(sock, first: bytes = b"") -> bytes:
    chunks = [first] if first else []
    while data := sock.recv(1 << 16):
        chunks.append(data)
    return b"".join(chunks)


def _answer(raw: bytes, url: str, headers: dict[str, str] | None = None) -> Any:
    """The JSON of the HTTP answer ``raw``; ``headers`` receives its headers (names in lower case)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if not sep or len(status) < 2 or not status[0].startswith("HTTP/") or not status[1].isdigit():
        raise ValueError(f"not an HTTP answer from {urllib.parse.urlsplit(url).netloc}")
    got = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        got[name.strip().lower()] = value.strip()
    if "chunked" in got.get("transfer-encoding", "").lower():
        body = _unchunk(body)
    elif "content-length" in got:
        body = body[: int(got["content-length"])]
    if headers is not None:
        headers.update(got)
    code = int(status[1])
    if code != 200:
        raise HTTPStatusError(code, body)
    return json.loads(body.decode())


def _unchunk(body: bytes) -> bytes:
    out, at = [], 0
    while True:
        end = body.index(b"\r\n", at)
        size = int(body[at:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(body[end + 2 : end + 2 + size])
        at = end + 2 + size + 2


def collection_tag(folder: str) -> str:
    """How an answer names the collection ``folder`` (absolute) in ``COLLECTION_HEADER``: its path's bytes,
    percent-encoded, so any name (not UTF-8, not Latin-1) fits a header and compares exactly."""
    return urllib.parse.quote(os.fsencode(folder), safe="/")


def _records(want: str):
    """The recorded servers of the collection folder ``want`` whose process is alive (the records of stopped
    servers are deleted on the way)."""
    folder = config.home() / "servers"
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.json")):
        try:
            info = ServerInfo(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if info.collection != want:
            continue
        if not _alive(info.pid):
            _debug("removing the record of a stopped server: %s", path)
            path.unlink(missing_ok=True)
            continue
        yield info


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


def _search_target(params: dict[str, Any]) -> str:
    return "/api/search?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})


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
        return rows, _stale(headers)
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
    failed: list[ServerInfo] = []
    for info in _records(want):
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
        return info, rows, _stale(headers), headers.get(PATHS_HEADER.lower()) == EXACT_PATHS
    info = find(want, skip=tuple(failed))
    if info is None:
        return None
    answer = remote_search(info, params)
    return None if answer is None else (info, *answer, False)


def _ask_one(info: ServerInfo, target: str, tag: str) -> bytes:
    """The raw HTTP answer of ``info`` to ``target``. An answer that has not begun after ANSWER_WAIT_S is
    waited for (up to QUERY_TIMEOUT_S) only if the server says, within ALIVE_TIMEOUT_S, that it is alive and
    serves the collection ``tag`` names; otherwise ``TimeoutError``."""
    with _send(info.url + target, ANSWER_WAIT_S) as sock:
        try:
            first = sock.recv(1 << 16)
        except TimeoutError:
            if not _says_alive(info, tag):
                raise TimeoutError(f"no answer in {ANSWER_WAIT_S} s and no sign of life") from None
            sock.settimeout(QUERY_TIMEOUT_S)  # alive and searching (a cold page cache, a busy machine)
            first = sock.recv(1 << 16)
        sock.settimeout(QUERY_TIMEOUT_S)
        return _read(sock, first)


def _says_alive(info: ServerInfo, tag: str) -> bool:
    """Whether the server answers ``/api/alive`` (no lock, no search: its event loop alone) for ``tag``'s
    collection within ALIVE_TIMEOUT_S."""
    headers: dict[str, str] = {}
    try:
        _get_json(info.url + "/api/alive", ALIVE_TIMEOUT_S, headers)
    except (OSError, ValueError):
        return False
    return headers.get(COLLECTION_HEADER.lower()) == tag
