"""What a ``lexsearch query`` process and a running server exchange, with as little Python as possible.

A fresh query process that a server answers spends most of its time starting Python and importing modules:
this module needs ``os`` and the C modules ``_socket`` and ``math`` only (no ``pathlib``, ``typing``,
``socket``, ``urllib`` or ``json``: together ~40 ms of such a process on a 2-core machine). It reads the
servers' records, sends an HTTP/1.1 request over a plain socket and splits the answer; ``discovery`` builds
its liveness checks and JSON requests on it, and ``lexsearch.cli.quick`` asks a server for the very bytes
``lexsearch query`` prints (``/api/search?format=``).
"""

from __future__ import annotations

import _socket
import os

# How long a liveness check may take: a live local server answers /api/info in a millisecond or two; a
# process that holds the port but does not answer must not delay the query by more than this.
PROBE_TIMEOUT_S = 1.0
# A search sent straight to a recorded server: how long its answer may take before the server is asked
# whether it is alive (``/api/alive``), and how long that question may take (together no longer than
# PROBE_TIMEOUT_S: a silent server delays a query no more than the liveness check of ``discovery.find``).
ANSWER_WAIT_S = 0.5
ALIVE_TIMEOUT_S = PROBE_TIMEOUT_S - ANSWER_WAIT_S
QUERY_TIMEOUT_S = 60.0
# Every answer of a server names its collection folder here (percent-encoded bytes of the path).
COLLECTION_HEADER = "Lexsearch-Collection"
# Matches left out of an answer because their file is gone (a re-index is due); the JSON stays the --json list.
STALE_HEADER = "Lexsearch-Stale-Results"
# An answer whose every ``path`` is the very name stored (all UTF-8) says so: the client need not read them.
PATHS_HEADER = "Lexsearch-Paths"
EXACT_PATHS = "exact"
# The search's notes (``Results.notes``: lines about the query as a whole) as a JSON list in ASCII (any text
# fits a header that way); absent when there are none. ``lexsearch query`` prints them with ``notes_text``.
NOTES_HEADER = "Lexsearch-Notes"

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


def quote(data: str | bytes, safe: bytes = b"/") -> str:
    """``urllib.parse.quote`` (UTF-8, upper-case escapes, ``safe`` kept) without importing urllib."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    keep = _SAFE | frozenset(safe)
    return "".join(chr(b) if b in keep else f"%{b:02X}" for b in raw)


def encode_notes(notes: list[str]) -> str:
    """``NOTES_HEADER``'s value for ``notes``: a JSON list, ASCII only (no CR/LF: escaped)."""
    from json import dumps  # the server's side; a query process only reads (``decode_notes``)

    return dumps(list(notes), ensure_ascii=True)


def decode_notes(value: str | None) -> list[str]:
    """The notes of a ``NOTES_HEADER`` value (none for no header or one that is not a list of strings)."""
    if not value:
        return []
    from json import loads  # only when there is a note to read

    try:
        notes = loads(value)
    except ValueError:
        return []
    return [n for n in notes if isinstance(n, str)] if isinstance(notes, list) else []


def notes_text(notes: list[str]) -> str:
    """What ``lexsearch query`` writes on stderr for a search's notes, whoever searched: one line each,
    made safe for a terminal (``lexsearch.display.shown``)."""
    if not notes:
        return ""
    from lexsearch.display import shown

    return "".join(f"note: {shown(n)}\n" for n in notes)


def collection_tag(folder: str) -> str:
    """How an answer names the collection ``folder`` (absolute) in ``COLLECTION_HEADER``: its path's bytes,
    percent-encoded, so any name (not UTF-8, not Latin-1) fits a header and compares exactly."""
    return quote(os.fsencode(folder))


def query_string(params: dict[str, object]) -> str:
    """``params`` (None values left out) as a URL query (what ``urllib.parse.urlencode`` gives, spaces as %20)."""
    return "&".join(f"{quote(k, b'')}={quote(str(v), b'')}" for k, v in params.items() if v is not None)


def absolute(path: str) -> str:
    """``str(Path(path).expanduser().absolute())`` on POSIX, without pathlib: ``~`` expanded, made absolute
    from the working directory, empty and ``.`` parts dropped (``..`` kept, as pathlib keeps it)."""
    path = os.path.expanduser(path)
    if not path.startswith("/"):
        path = os.getcwd() + "/" + path
    root = "//" if path.startswith("//") and not path.startswith("///") else "/"
    parts = [p for p in path.split("/") if p and p != "."]
    return root + "/".join(parts)


def home() -> str:
    """``str(config.home())``, not created (a query that finds no record has nothing to write there)."""
    return absolute(os.environ.get("LEXSEARCH_HOME") or os.path.join(os.path.expanduser("~"), ".lexsearch"))


def collection_folder(name_or_path: str) -> str | None:
    """The absolute folder ``lexsearch.index.paths.resolve`` makes of a ``--collection`` value (None for the
    empty name, which only the full command reports)."""
    if not name_or_path.strip():
        return None
    if os.sep in name_or_path or (os.altsep and os.altsep in name_or_path) or name_or_path.startswith("."):
        return absolute(name_or_path)
    return absolute(os.path.join(home(), "collections", name_or_path))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    except OSError:
        return False
    return True


def records(folder: str, on_removed=None) -> list[dict]:
    """The servers' records (host, port, pid, collection, ...) for the collection ``folder`` whose process
    is alive, in file-name order; the record of a stopped server is deleted (``on_removed(path)`` told)."""
    where = os.path.join(home(), "servers")
    try:
        names = sorted(n for n in os.listdir(where) if n.endswith(".json"))
    except OSError:
        return []
    from json import loads  # only when there is a record to read

    out = []
    for name in names:
        path = os.path.join(where, name)
        try:
            with open(path, "rb") as f:
                record = loads(f.read())
            host, port, pid = str(record["host"]), int(record["port"]), int(record["pid"])
            if record["collection"] != folder:
                continue
        except (OSError, ValueError, TypeError, KeyError):
            continue
        if not alive(pid):
            if on_removed is not None:
                on_removed(path)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            continue
        out.append(dict(record, host=host, port=port, pid=pid))
    return out


def url_host(host: str) -> str:
    """The host to connect to for a server bound to ``host`` (every interface: loopback reaches it)."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def url(host: str, port: int) -> str:
    """The server's URL (``discovery.ServerInfo.url``)."""
    host = url_host(host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def connect(host: str, port: int, timeout: float):
    """A connected TCP socket (an IP address, or a name such as ``localhost``)."""
    host = url_host(host)
    family, _, _, _, address = _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM)[0]
    sock = _socket.socket(family, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def send(host: str, port: int, target: str, timeout: float):
    """A socket with the GET request for ``target`` (path and query) sent; its timeout ``timeout``."""
    sock = connect(host, port, timeout)
    try:
        netloc = f"[{url_host(host)}]:{port}" if ":" in url_host(host) else f"{url_host(host)}:{port}"
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: {netloc}\r\nAccept: application/json\r\n"
            "Connection: close\r\n\r\n".encode("ascii")
        )
    except BaseException:
        sock.close()
        raise
    return sock


def read(sock, first: bytes = b"") -> bytes:
    chunks = [first] if first else []
    while data := sock.recv(1 << 16):
        chunks.append(data)
    return b"".join(chunks)


class NotHTTP(ValueError):
    """What came back is no HTTP answer."""


def split(raw: bytes, where: str = "the server") -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body) of the raw HTTP answer ``raw``."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if not sep or len(status) < 2 or not status[0].startswith("HTTP/") or not status[1].isdigit():
        raise NotHTTP(f"not an HTTP answer from {where}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _unchunk(body)
    elif "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return int(status[1]), headers, body


def _unchunk(body: bytes) -> bytes:
    out, at = [], 0
    while True:
        end = body.index(b"\r\n", at)
        size = int(body[at:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(body[end + 2 : end + 2 + size])
        at = end + 2 + size + 2


def ask_one(host: str, port: int, target: str, tag: str) -> bytes:
    """The raw HTTP answer of the server at ``host:port`` to ``target``. An answer that has not begun after
    ANSWER_WAIT_S is waited for (up to QUERY_TIMEOUT_S) only if the server says, within ALIVE_TIMEOUT_S,
    that it is alive and serves the collection ``tag`` names; otherwise ``TimeoutError``. Refused or broken
    connections raise ``OSError``."""
    sock = send(host, port, target, ANSWER_WAIT_S)
    try:
        try:
            first = sock.recv(1 << 16)
        except TimeoutError:
            if not says_alive(host, port, tag):
                raise TimeoutError(f"no answer in {ANSWER_WAIT_S} s and no sign of life") from None
            sock.settimeout(QUERY_TIMEOUT_S)  # alive and searching (a cold page cache, a busy machine)
            first = sock.recv(1 << 16)
        sock.settimeout(QUERY_TIMEOUT_S)
        return read(sock, first)
    finally:
        sock.close()


def says_alive(host: str, port: int, tag: str) -> bool:
    """Whether the server answers ``/api/alive`` (no lock, no search: its event loop alone) for ``tag``'s
    collection within ALIVE_TIMEOUT_S."""
    try:
        sock = send(host, port, "/api/alive", ALIVE_TIMEOUT_S)
        try:
            code, headers, _ = split(read(sock))
        finally:
            sock.close()
    except (OSError, ValueError):
        return False
    return code == 200 and headers.get(COLLECTION_HEADER.lower()) == tag
