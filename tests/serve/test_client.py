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
def find(folder):
    return discovery.ServerInfo("127.0.0.1", 1, 1, str(folder))
def remote_search(info, params):
    return json.loads(sys.argv[2]), 0
read_paths = client.image_paths
def image_paths(folder, ids):
    out = read_paths(folder, ids)
    at_answer["heavy"] = [m for m in HEAVY if m in sys.modules]
    return out
discovery.find, discovery.remote_search, client.image_paths = find, remote_search, image_paths
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
