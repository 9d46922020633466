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


# The same fake server, but through the installed entry point's ``main`` with a real argv: a query it answers
# never loads Click; one it declines runs the full command line, which asks the (fake) server itself.
QUICK_CHILD = """
import json, sys
from lexsearch.serve import discovery
ROWS = json.loads(sys.argv[1])
EXACT = "exact" in sys.argv[3:]  # the server says its paths are the stored names: none is read here
def ask(folder, params):
    sys.stderr.write("asked " + json.dumps(params, sort_keys=True) + "\\n")
    return discovery.ServerInfo("127.0.0.1", 1, 1, str(folder)), ROWS, 0, EXACT
discovery.ask = ask
import os
real_exit = os._exit
def quick_exit(code):  # both paths end with os._exit (the full one after a query): say what was loaded
    sys.stderr.write("sqlite3 " + str("sqlite3" in sys.modules) + "\\n")
    sys.stderr.write("click " + str("click" in sys.modules) + "\\n")
    sys.stderr.flush()
    real_exit(code)
os._exit = quick_exit
import lexsearch.cli as entry
sys.argv = ["lexsearch"] + json.loads(sys.argv[2])
entry.main()
"""


@pytest.fixture()
def one_image_collection(tmp_path):
    with Collection.open(tmp_path / "col", readonly=False) as col:
        col.bind_model({"model_id": "m", "vocab_hash": "v", "vocab_size": 50, "dense_dim": 0}, "rebuild")
        (image_id,) = col.apply(
            Changes(insert=[NewImage("/p/red.jpg", 1, 1, "h", np.array([1], np.uint32), np.array([0.5]))])
        )
    row = {"rank": 1, "id": image_id, "path": "/p/red.jpg", "score": 0.75, "lexical": 0.5, "dense": 0.25}
    row["words"] = [{"word": "red", "weight": 0.4}]
    return tmp_path / "col", [row]


def _entry(rows, argv, *flags):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS)]))
    out = subprocess.run(
        [sys.executable, "-c", QUICK_CHILD, json.dumps(rows), json.dumps(argv), *flags],
        capture_output=True,
        env=env,
    )
    return out.returncode, out.stdout.decode(), out.stderr.decode().splitlines()


@pytest.mark.parametrize("form", ["table", "--json", "--paths", "-0"])
def test_a_plain_query_is_answered_without_click_and_prints_what_the_full_command_prints(
    one_image_collection, form
):
    folder, rows = one_image_collection
    extra = [] if form == "table" else [form]
    argv = ["query", "red", "thing", "--collection", str(folder), "--top=3", *extra]
    code, quick, err = _entry(rows, argv)
    assert code == 0 and err[-1] == "click False", err
    assert (
        'asked {"expand": null, "min_score": null, "pruned": null, "q": "red thing", "rerank": null, "top": 3}'
        in err
    )
    # The full command line over the same answer (an option only it reads: --device cpu).
    code, full, err = _entry(rows, [*argv, "--device", "cpu"])
    assert code == 0 and err[-1] == "click True", err
    assert quick == full and "/p/red.jpg" in quick
    assert (
        "sqlite3 True" in err
    )  # the paths were read from the collection (the answer did not vouch for them)
    # A server that says its paths are the stored names: none is read, sqlite3 is never imported, same output.
    code, exact, err = _entry(rows, argv, "exact")
    assert code == 0 and err[-2:] == ["sqlite3 False", "click False"], err
    assert exact == quick
    # ... and it is believed: the path it sent is printed (the collection's own row is never read).
    code, taken, err = _entry([dict(rows[0], path="/p/as-sent.jpg")], argv, "exact")
    assert code == 0 and "/p/as-sent.jpg" in taken and "/p/red.jpg" not in taken, err


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
