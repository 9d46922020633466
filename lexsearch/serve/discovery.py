"""Finding a running ``lexsearch serve`` for a collection, so ``lexsearch query`` can ask it.

A server writes a small JSON file under ``LEXSEARCH_HOME/servers/`` (host, port, pid, collection folder) and
removes it when it stops. A file is trusted only if its process is alive *and* the server answers
``/api/info`` with the same collection; a file whose process is gone is deleted. Standard library only:
``lexsearch query`` must stay light when it hands a query to the server.
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
# Matches left out of an answer because their file is gone (a re-index is due); the JSON stays the --json list.
STALE_HEADER = "Lexsearch-Stale-Results"
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
    import socket

    parts = urllib.parse.urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    with socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout) as sock:
        host = parts.netloc
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n"
            "Connection: close\r\n\r\n".encode("ascii")
        )
        chunks = []
        while data := sock.recv(1 << 16):
            chunks.append(data)
    raw = b"".join(chunks)
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if not sep or len(status) < 2 or not status[0].startswith("HTTP/") or not status[1].isdigit():
        raise ValueError(f"not an HTTP answer from {parts.netloc}")
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


def find(collection: str | os.PathLike[str]) -> ServerInfo | None:
    """A live server for ``collection`` (its folder), or None."""
    want = str(Path(collection).absolute())
    folder = config.home() / "servers"
    if not folder.is_dir():
        return None
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
        try:
            answer = _get_json(info.url + "/api/info", PROBE_TIMEOUT_S)
        except (OSError, ValueError) as exc:
            _debug("server %s does not answer (%s)", info.url, exc)
            continue
        if isinstance(answer, dict) and answer.get("collection") == want:
            return info
    return None


def remote_search(info: ServerInfo, params: dict[str, Any]) -> tuple[list[dict[str, Any]], int] | None:
    """``/api/search`` on a running server: (rows, stale matches left out), or None when it cannot be reached
    (the caller searches itself).

    A query the server rejects (a usage error) raises the same :class:`UsageError` a local search would.
    """
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    headers: dict[str, str] = {}
    try:
        rows = _get_json(f"{info.url}/api/search?{query}", QUERY_TIMEOUT_S, headers)
        stale = {k.lower(): v for k, v in headers.items()}.get(STALE_HEADER.lower(), "0")
        return rows, int(stale) if stale.isdigit() else 0
    except HTTPStatusError as exc:
        try:
            message = json.loads(exc.body.decode()).get("error") or str(exc)
        except (ValueError, AttributeError):
            message = str(exc)
        if exc.code == 400:
            raise UsageError(message) from None
        raise LexsearchError(f"the server at {info.url} failed: {message}") from None
    except (OSError, ValueError) as exc:
        _debug("server %s went away (%s); searching here", info.url, exc)
        return None
