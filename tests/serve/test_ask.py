"""``discovery.ask``: the search sent straight to a recorded server, its answer taken only from the right one.

A real uvicorn server in a thread over a fake service (no model, no collection): the service records what
it was asked, and can be slow.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("uvicorn")

from lexsearch.errors import UsageError  # noqa: E402
from lexsearch.serve import discovery  # noqa: E402
from lexsearch.serve.server import Server  # noqa: E402

ROW = {"rank": 1, "id": 7, "path": "/p/red.jpg", "score": 0.5, "lexical": 0.5, "dense": None, "words": []}


class FakeService:
    """What the app calls on a service; ``delay`` makes a search hold the lock that long."""

    def __init__(self, folder: Path, delay: float = 0.0) -> None:
        self.collection = SimpleNamespace(path=Path(folder).absolute())
        self.delay = delay
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def search(self, q: str, top: int = 10, **options) -> list[dict]:
        self.calls.append("search")
        if q == "-red":
            raise UsageError("this query only excludes words")
        with self._lock:
            time.sleep(self.delay)
            return [dict(ROW, path=f"{q} {top}")]

    def info(self) -> dict:
        self.calls.append("info")
        with self._lock:  # as SearchService.info: behind a search in progress
            return {"collection": str(self.collection.path), "name": "col", "images": 1}


@pytest.fixture
def serve(lexsearch_home):
    servers = []

    def start(service: FakeService) -> Server:
        server = Server(service, "127.0.0.1", 0)
        server.start_in_thread()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _record(folder: Path, port: int, claims: Path) -> Path:
    path = discovery.servers_dir() / f"{os.getpid()}-{port}.json"
    path.write_text(
        json.dumps({"host": "127.0.0.1", "port": port, "pid": os.getpid(), "collection": str(claims)})
    )
    return path


def test_a_search_goes_straight_to_the_server_without_a_liveness_check(tmp_path, serve):
    service = FakeService(tmp_path / "col")
    server = serve(service)
    info, rows, stale, exact = discovery.ask(tmp_path / "col", {"q": "red", "top": 3, "rerank": None})
    assert (info.port, rows, stale, exact) == (server.port, [dict(ROW, path="red 3")], 0, False)
    assert service.calls == ["search"]  # no /api/info round trip first
    with pytest.raises(UsageError, match="only excludes"):  # the right server's error: raised as a local one
        discovery.ask(tmp_path / "col", {"q": "-red", "top": 3})
    assert discovery.ask(tmp_path / "other", {"q": "red", "top": 3}) is None


def test_an_answer_from_another_collections_server_is_not_taken(tmp_path, serve):
    service = FakeService(tmp_path / "b")
    server = serve(service)
    # A record for collection a whose port (and live pid) now belong to a server of collection b.
    _record(tmp_path, server.port, tmp_path / "a")
    assert discovery.ask(tmp_path / "a", {"q": "red", "top": 3}) is None
    # Its answer named b: the way of find followed (its /api/info check said b too, so nothing was taken).
    assert service.calls == ["search", "info"]


def test_a_slow_search_is_waited_for_when_the_server_says_it_is_alive(tmp_path, serve):
    # Longer than the answer wait and the alive check together; the search holds the lock /api/info needs.
    service = FakeService(tmp_path / "col", delay=discovery.PROBE_TIMEOUT_S + 0.3)
    serve(service)
    _, rows, _, _ = discovery.ask(tmp_path / "col", {"q": "red", "top": 2})
    assert rows == [dict(ROW, path="red 2")] and service.calls == ["search"]


def test_a_silent_server_costs_no_more_than_finds_check_and_stale_records_go(tmp_path, lexsearch_home):
    col = tmp_path / "col"
    folder = discovery.servers_dir()
    dead = folder / "999999-1.json"
    dead.write_text(
        json.dumps({"host": "127.0.0.1", "port": 1, "pid": 2**22 + 12345, "collection": str(col)})
    )
    with socket.socket() as silent:  # alive (our pid) and listening, but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        quiet = _record(tmp_path, silent.getsockname()[1], col)
        t = time.perf_counter()
        assert discovery.ask(col, {"q": "red", "top": 3}) is None
        took = time.perf_counter() - t
    assert discovery.ANSWER_WAIT_S + discovery.ALIVE_TIMEOUT_S <= discovery.PROBE_TIMEOUT_S
    # One wait for the answer and one alive check; find's own check is not repeated for it.
    assert took < discovery.PROBE_TIMEOUT_S + 0.4, took
    assert not dead.exists() and quiet.exists()


def _old_server(folder: Path):
    """A server of an older version: answers /api/search without the collection header, /api/info as ever.
    Returns (url's port, the requests it saw)."""
    srv = socket.create_server(("127.0.0.1", 0))
    seen: list[str] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                target = conn.recv(65536).split(b" ")[1].decode()
                seen.append(target.split("?")[0])
                data = {"collection": str(folder)} if target.startswith("/api/info") else [ROW]
                body = json.dumps(data).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))

    threading.Thread(target=serve, daemon=True).start()
    return srv, seen


def test_an_older_server_without_the_header_is_asked_the_way_find_does(tmp_path, lexsearch_home):
    col = (tmp_path / "col").absolute()
    srv, seen = _old_server(col)
    try:
        _record(tmp_path, srv.getsockname()[1], col)
        info, rows, _, exact = discovery.ask(col, {"q": "red", "top": 3})
        assert rows == [ROW] and info.port == srv.getsockname()[1] and not exact
        assert seen == ["/api/search", "/api/info", "/api/search"]
    finally:
        srv.close()


def test_the_collection_tag_names_any_folder_exactly():
    odd = os.fsdecode(b"/photos/caf\xe9 \xe2\x80\x94 50%/col")  # not UTF-8, a space, a percent sign
    tag = discovery.collection_tag(odd)
    assert tag.isascii() and " " not in tag
    import urllib.parse

    assert urllib.parse.unquote_to_bytes(tag) == os.fsencode(odd)
    assert tag != discovery.collection_tag("/photos/cafe/col")


def test_an_answer_says_whether_its_paths_are_the_stored_names(small_collection, lexsearch_home):
    from lexsearch.index.store import Collection
    from lexsearch.search import load_encoder
    from lexsearch.serve.service import SearchService

    _, col_path = small_collection
    with Collection.open(col_path) as col:
        service = SearchService(col, load_encoder(col, device="cpu"))
        rows = service.search("a red circle", 3, expand=True)
        assert rows and rows.exact_paths  # the test images' names are all UTF-8
        server = Server(service, "127.0.0.1", 0)
        server.start_in_thread()
        try:
            _, got, _, exact = discovery.ask(col_path, {"q": "a red circle", "top": 3, "expand": "1"})
            assert exact and got == list(rows)
            # A name that is not UTF-8 among the results: the JSON's text is not the name, so no promise.
            odd = os.fsdecode(b"/photos/caf\xe9.jpg")
            real = service.collection.image_paths
            service.collection.image_paths = lambda ids: {i: odd for i in real(ids)}
            service.collection.file_exists = lambda path: True  # (no such file: it would count as stale)
            service.collection.clear()
            _, got, _, exact = discovery.ask(col_path, {"q": "a red circle", "top": 3, "expand": "1"})
            assert not exact and got[0]["path"] == "/photos/caf\\xe9.jpg"
        finally:
            server.stop()


def test_a_server_silent_to_the_quick_path_is_not_waited_for_again(tmp_path, lexsearch_home):
    from lexsearch.cli import quick

    col = (tmp_path / "col").absolute()
    with socket.socket() as silent:  # alive (our pid) and listening, but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        _record(tmp_path, silent.getsockname()[1], col)
        t = time.perf_counter()
        quick.answer_and_exit(["query", "--collection", str(col), "red"])  # declines: returns
        first = time.perf_counter() - t
        t = time.perf_counter()
        assert discovery.ask(col, {"q": "red", "top": 10}) is None  # the full command's ask, right after
        again = time.perf_counter() - t
    assert discovery.ANSWER_WAIT_S <= first < discovery.PROBE_TIMEOUT_S + 0.4, first
    assert again < discovery.ANSWER_WAIT_S, again  # not asked again (the record itself is kept)
    assert discovery._SILENT == {}  # used once
