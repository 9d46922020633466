"""``lexsearch query`` answered by a running server: no numpy or torch up to the answer, exact paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lexsearch.index.store import Changes, Collection, NewImage

TESTS = Path(__file__).parent.parent
HEAVY = ("numpy", "torch", "scipy", "faiss", "PIL", "lexsearch.index.store", "lexsearch.search")

# A fresh `lexsearch query` process whose server answers: discovery is faked (no HTTP), the rest is real.
CHILD = """
import json, sys
from lexsearch.serve import client, discovery
at_answer = {}
def ask(folder, params):
    return discovery.ServerInfo("127.0.0.1", 1, 1, str(folder)), json.loads(sys.argv[2]), 0, False
read_paths = client.image_paths
def image_paths(folder, ids):
    out = read_paths(folder, ids)
    at_answer["heavy"] = [m for m in HEAVY if m in sys.modules]
    return out
discovery.ask, client.image_paths = ask, image_paths
from lexsearch.cli import cli
try:
    cli.main(["query", "red", "--collection", sys.argv[1], "--paths"], standalone_mode=False)
finally:
    sys.stdout.flush()
    at_answer["at_exit"] = [m for m in HEAVY if m in sys.modules]
    sys.stderr.write(json.dumps(at_answer) + "\\n")
""".replace("HEAVY", repr(HEAVY))


def test_a_query_answered_by_a_server_imports_nothing_heavy_and_prints_exact_paths(tmp_path):
    odd = os.fsdecode(b"/photos/caf\xe9.jpg")  # not UTF-8: stored as bytes, printed as the very bytes
    rng = np.random.default_rng(0)
    with Collection.open(tmp_path / "col", readonly=False) as col:
        col.bind_model({"model_id": "m", "vocab_hash": "v", "vocab_size": 50, "dense_dim": 0}, "rebuild")
        ids = col.apply(
            Changes(
                insert=[
                    NewImage(p, 1, 1, "h", terms=np.array([1, 7], np.uint32), weights=rng.random(2) + 0.1)
                    for p in (odd, "/photos/plain.jpg")
                ]
            )
        )
    rows = [
        {
            "rank": k + 1,
            "id": i,
            "path": "as JSON has it",
            "score": 0.5,
            "lexical": 0.5,
            "dense": None,
            "words": [],
        }
        for k, i in enumerate(reversed(ids))
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS)]))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "col"), json.dumps(rows)],
        capture_output=True,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    seen = json.loads(out.stderr.decode().strip().splitlines()[-1])
    assert seen["heavy"] == []
    # Printing it loads the search package's output module alone: no numpy, never the store.
    assert set(seen["at_exit"]) <= {"lexsearch.search"}
    assert out.stdout == b"/photos/plain.jpg\n/photos/caf\xe9.jpg\n"


def test_the_servers_image_count_follows_the_collection(tmp_path):
    from lexsearch.serve.service import SearchService

    rng = np.random.default_rng(1)

    def image(p):
        return NewImage(p, 1, 1, "h", terms=np.array([2], np.uint32), weights=rng.random(1) + 0.1)

    with Collection.open(tmp_path / "col", readonly=False) as writer:
        writer.bind_model({"model_id": "m", "vocab_hash": "v", "vocab_size": 50, "dense_dim": 0}, "rebuild")
        writer.apply(Changes(insert=[image("/a.jpg")]))
        with Collection.open(tmp_path / "col") as reader:
            service = SearchService(reader, encoder=None)
            assert service.info()["images"] == 1
            writer.apply(Changes(insert=[image("/b.jpg"), image("/c.jpg")]))
            assert service.info()["images"] == 3  # counted again after the change


def _one_answer_server(answer: bytes):
    """A socket on loopback that answers one request with ``answer`` (raw bytes), then closes."""
    import socket
    import threading

    srv = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = srv.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(answer)
        srv.close()

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{srv.getsockname()[1]}"


def test_the_plain_socket_client_reads_chunked_and_sized_answers_and_statuses():
    from lexsearch.serve import discovery

    body = json.dumps([{"rank": 1, "word": "café"}]).encode()
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nX-A: 1\r\n\r\n"
    chunked += b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:])) + b"0\r\n\r\n"
    headers = {}
    assert discovery._get_json(_one_answer_server(chunked) + "/api/x", 5.0, headers) == json.loads(body)
    assert headers["x-a"] == "1"
    sized = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    assert discovery._get_json(_one_answer_server(sized) + "/api/x?q=a", 5.0) == json.loads(body)
    bad = b'HTTP/1.1 400 Bad Request\r\ncontent-length: 17\r\n\r\n{"error": "nope"}'
    with pytest.raises(discovery.HTTPStatusError) as err:
        discovery._get_json(_one_answer_server(bad) + "/api/x", 5.0)
    assert err.value.code == 400 and json.loads(err.value.body) == {"error": "nope"}
    with pytest.raises(ValueError, match="not an HTTP answer"):
        discovery._get_json(_one_answer_server(b"hello") + "/", 5.0)


# Through the installed entry point's ``main`` with a real argv, against a real server (in this process's
# thread) over a collection whose query vector is cached: a query it answers never loads Click (nor pathlib,
# typing, socket, sqlite3 or numpy); one it declines runs the full command line, which asks the server too.
QUICK_CHILD = """
import os, sys
before = set(sys.modules)
real_exit = os._exit
def quick_exit(code):  # both paths end with os._exit (the full one after a query): say what was loaded
    new = sorted(set(sys.modules) - before)
    sys.stderr.write("loaded " + " ".join(new) + "\\n")
    sys.stderr.write("click " + str("click" in sys.modules) + "\\n")
    sys.stderr.flush()
    real_exit(code)
os._exit = quick_exit
import lexsearch.cli as entry
sys.argv = ["lexsearch"] + sys.argv[1:]
entry.main()
"""
NOT_ON_THE_QUICK_PATH = {
    "click",
    "typing",
    "socket",
    "sqlite3",
    "numpy",
    "pathlib",
    "urllib.parse",
    "logging",
}
ODD = os.fsdecode(b"/photos/caf\xe9.jpg")  # not UTF-8: --paths prints the very bytes


class Vocabulary:
    """The vocabulary side of an encoder: word "w3" is term 3 (queries come from the collection's cache)."""

    vocab_size, dense_dim = 50, 0

    def words(self, ids):
        return ["w" + str(int(i)) for i in ids]

    def word_terms(self, w):
        return [int(w[1:])] if w[:1] == "w" and w[1:].isdigit() else []

    def encode_texts(self, texts):
        raise RuntimeError("query vector not cached")


@pytest.fixture()
def running_server(tmp_path, lexsearch_home):
    from lexsearch.serve.server import Server
    from lexsearch.serve.service import SearchService

    folder = tmp_path / "col"
    names = ["/p/red.jpg", ODD, "/p/new\nline.jpg", "/p/blue.jpg"]
    with Collection.open(folder, readonly=False) as col:
        col.bind_model({"model_id": "m", "vocab_hash": "v", "vocab_size": 50, "dense_dim": 0}, "rebuild")
        col.apply(
            Changes(
                insert=[
                    NewImage(
                        p,
                        1,
                        1,
                        "h",
                        terms=np.array([1, 7, 9 + k], np.uint32),
                        weights=np.array([0.5, 0.3 + k / 10, 0.2]),
                    )
                    for k, p in enumerate(names)
                ]
            )
        )
        for text, terms in (("w1 w7", [1, 7]), ("w1", [1]), ("w11", [11]), ("w9", [9])):
            col.cache_query(text, np.bincount(terms, weights=[0.8, 0.6][: len(terms)], minlength=50), None)
    col = Collection.open(folder)
    col.file_exists = lambda path: True  # the names are made up
    service = SearchService(col, Vocabulary())
    server = Server(service, "127.0.0.1", 0)
    server.start_in_thread()
    yield folder, service
    server.stop()
    col.close()


def _entry(argv):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS)]))
    out = subprocess.run([sys.executable, "-c", QUICK_CHILD, *argv], capture_output=True, env=env)
    err = out.stderr.decode(errors="replace").splitlines()
    return out.returncode, out.stdout, err


@pytest.mark.parametrize(
    "args",
    [
        ["w1", "w7"],
        ["--json", "w1", "w7"],
        ["--paths", "w1", "w7"],
        ["-0", "w1", "--top=2"],
        ["w11", "--no-rerank"],  # one image
        ["w9", "--min-score", "0.99"],  # none: the honest empty answer
        ["--json", "w9", "--min-score=0.99"],
    ],
)
def test_a_plain_query_is_answered_without_click_and_prints_what_the_full_command_prints(
    running_server, args
):
    folder, _ = running_server
    argv = ["-v", "query", "--collection", str(folder), *args]
    code, quick, err = _entry(argv)
    assert code == 0 and err[-1] == "click False", err
    assert "answered by the running server at http://127.0.0.1:" in err[0]
    loaded = set(err[-2].split()[1:])
    assert not loaded & NOT_ON_THE_QUICK_PATH, loaded
    # The full command line over the same server (an option only it reads: --device cpu).
    code, full, err = _entry([*argv, "--device", "cpu"])
    assert code == 0 and err[-1] == "click True", err
    assert "answered by the running server" in "".join(err)
    assert quick == full
    if "--paths" in args:
        assert os.fsencode(ODD) + b"\n" in quick


def test_the_quick_path_declines_what_the_server_will_not_answer_plainly(running_server):
    folder, service = running_server
    # A usage error of the server's: the full command reports it in its own words.
    code, out, err = _entry(
        ["query", "--collection", str(folder), " -w1"]
    )  # one argument: the server parses it
    assert code != 0 and err[-1] == "click True" and "only excludes" in " ".join(err), err
    # Stale matches to note (a file gone): the full command prints the note.
    service.collection.file_exists = lambda path: path != "/p/red.jpg"
    code, out, err = _entry(["query", "--collection", str(folder), "--paths", "w1", "w7"])
    assert err[-1] == "click True" and "no longer exist" in " ".join(err), err
    assert b"/p/red.jpg" not in out and b"/p/blue.jpg" in out


def test_the_lean_helpers_agree_with_pathlib_and_urllib(tmp_path, monkeypatch, lexsearch_home):
    import urllib.parse

    from lexsearch.index.paths import resolve
    from lexsearch.serve import wire

    monkeypatch.chdir(tmp_path)
    for name in (
        "photos",
        "./col",
        "../x/./y//",
        "~/c",
        "/a//b/./c/",
        "//net/c",
        "///a",
        "a/b",
        "~x",
        "c\xe9",
    ):
        assert wire.collection_folder(name) == str(Path(resolve(name)).absolute()), name
    assert wire.collection_folder(" ") is None
    for raw in (b"/photos/caf\xe9 50%/x", "/ü/a b/~_.-".encode(), b"/plain/path"):
        assert wire.quote(raw) == urllib.parse.quote(raw, safe="/")
    params = {"q": 'white  horse +beach -night "a b" &=?', "top": 3, "rerank": None, "min_score": 0.25}
    parsed = urllib.parse.parse_qs(wire.query_string(params), keep_blank_values=True)
    assert parsed == {"q": [params["q"]], "top": ["3"], "min_score": ["0.25"]}
    assert wire.url("0.0.0.0", 5) == "http://127.0.0.1:5" and wire.url("::1", 5) == "http://[::1]:5"


def test_the_quick_path_declines_what_only_the_full_command_line_knows():
    from lexsearch.cli.quick import parse

    ok = parse(
        ["-v", "query", "white", "horse", "--collection=c", "--top", "5", "--min-score", "0.1", "--json"]
    )
    assert ok is not None and ok["words"] == ["white", "horse"] and ok["top"] == 5 and ok["verbose"]
    assert ok["collection"] == "c" and ok["min_score"] == 0.1 and ok["as_json"]
    for argv in (
        ["query"],  # nothing to search for: the full command says so
        ["query", "red", "--help"],
        ["query", "red", "-night"],  # an exclude word given as its own argument
        ["query", "red", "--top", "0"],
        ["query", "red", "--top"],
        ["query", "red", "--min-score", "nan"],
        ["query", "red", "--collection", ""],
        ["query", "red", "--json", "--paths"],
        ["query", "red", "--text-encoder", "lm"],
        ["query", "red", "--image", "x.jpg"],
        ["index", "DIR"],
        ["--version"],
    ):
        assert parse(argv) is None, argv
