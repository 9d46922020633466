"""`lexsearch serve`: the JSON API equals `query --json`, images only by id, the page works offline, the CLI
finds a running server. All in-process through Starlette's TestClient, a few against a real uvicorn."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import urllib.parse

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from lexsearch.cli import cli

pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from lexsearch.index.store import Collection  # noqa: E402
from lexsearch.search import load_encoder  # noqa: E402
from lexsearch.serve import SearchService, discovery  # noqa: E402
from lexsearch.serve import app as app_module  # noqa: E402
from lexsearch.serve.app import create_app  # noqa: E402
from lexsearch.serve.server import Server  # noqa: E402

QUERY = "a red circle"


@pytest.fixture
def service(small_collection):
    _, col_path = small_collection
    with Collection.open(col_path, readonly=True) as col:
        yield SearchService(col, load_encoder(col, device="cpu"))


@pytest.fixture
def client(service):
    return TestClient(create_app(service))


def _cli_json(col, *args):
    res = CliRunner().invoke(cli, ["query", QUERY, "--collection", str(col), "--json", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.mark.parametrize("args", [("--top", "4"), ("--top", "3", "--expand"), ("--top", "2", "--no-rerank")])
def test_api_search_is_cli_json_plus_id(small_collection, client, service, args):
    _, col = small_collection
    expected = _cli_json(col, *args)
    params = {"q": QUERY, "top": args[1]}
    params.update(
        {"expand": "1"} if "--expand" in args else {}, **({"rerank": "0"} if "--no-rerank" in args else {})
    )
    resp = client.get("/api/search", params=params)
    assert resp.status_code == 200
    assert re.fullmatch(r"search;dur=[0-9.]+", resp.headers["server-timing"])
    got = resp.json()
    assert [{k: v for k, v in r.items() if k != "id"} for r in got] == expected
    paths = service.collection.image_paths([r["id"] for r in got])
    assert [paths[r["id"]] for r in got] == [r["path"] for r in got]
    if "--expand" in args:
        assert got, "the expanded query must find the small_collection images"


def test_api_errors_are_one_line_json(client):
    for params, needle in (
        ({"q": "   "}, "empty"),
        ({"q": "-red"}, "only excludes"),
        ({"q": "red", "top": "0"}, "top"),
    ):
        resp = client.get("/api/search", params=params)
        assert resp.status_code == 400 and needle in resp.json()["error"], (params, resp.text)
    assert client.get("/api/search", params={"q": "red", "top": "x"}).status_code == 400


def test_no_match_is_an_empty_list(client):
    resp = client.get("/api/search", params={"q": "\u65e5\u672c\u8a9e"})  # no word of it is in the vocabulary
    assert resp.status_code == 200 and resp.json() == []


@pytest.mark.parametrize("q", ["zebra", "red -red"])
def test_no_candidate_is_an_empty_list_not_a_failure(small_collection, client, q):
    """Pieces of "zebra" are in the tiny vocabulary but in no image; "red -red" excludes every candidate:
    the dense product over no candidate used to fail (HTTP 500) where the command said "No image matches"."""
    _, col = small_collection
    resp = client.get("/api/search", params={"q": q})
    assert resp.status_code == 200 and resp.json() == []
    res = CliRunner().invoke(cli, ["query", q, "--collection", str(col), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout) == []


def test_warm_rows_keep_the_dense_width_without_vectors(service):
    """Rows read for no image, or for images without a dense vector, still have the collection's width."""
    width = int(service.collection.meta["dense_dim"])
    assert width > 0
    assert service.collection.forward_block([]).dense.shape == (0, width)
    assert service.collection.forward_block([10**9]).dense.shape == (1, width)  # no such image


def test_explain_similar_and_upload(small_collection, client, service):
    root, _ = small_collection
    ids = sorted(service.collection.image_paths(range(1, 100)))
    words = client.get(f"/api/explain/{ids[0]}").json()
    terms, weights = service.collection.forward([ids[0]])[ids[0]]
    order = np.argsort(-weights, kind="stable")[: len(words["words"])]
    assert [w["word"] for w in words["words"]] == service.encoder.words(terms[order])
    assert words["id"] == ids[0] and words["path"].endswith(".png")

    like = client.get(f"/api/similar/{ids[0]}", params={"top": 3}).json()
    assert (
        like
        and ids[0] not in [r["id"] for r in like]
        and [r["rank"] for r in like] == list(range(1, len(like) + 1))
    )

    data = (root / "photos" / "img_00000.png").read_bytes()
    up = client.post(
        "/api/search/image", params={"top": 3}, content=data, headers={"content-type": "image/png"}
    )
    assert up.status_code == 200 and up.json()[0]["id"] == ids[0]  # the same picture finds itself first
    bad = client.post("/api/search/image", content=b"not an image")
    error = bad.json()["error"]
    assert bad.status_code == 400 and error.startswith("the uploaded file: not an image") and "/" not in error


def test_upload_size_limit(client, monkeypatch):
    monkeypatch.setattr(app_module, "MAX_UPLOAD_BYTES", 1000)
    resp = client.post("/api/search/image", content=b"x" * 1001)
    assert resp.status_code == 413 and "larger than" in resp.json()["error"]

    def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(5):
            yield b"x" * 400

    assert client.post("/api/search/image", content=chunks()).status_code == 413


def test_images_by_id_and_cached_thumbnails(small_collection, client, service, lexsearch_home):
    root, _ = small_collection
    image_id, path = sorted(service.collection.image_paths(range(1, 100)).items())[0]
    big = client.get(f"/image/{image_id}")
    assert big.status_code == 200 and big.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(big.content)).size == Image.open(path).size

    first = client.get(f"/thumb/{image_id}")
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    cached = list((lexsearch_home / "thumbs").rglob("*.jpg"))
    assert len(cached) == 1 and cached[0].name.startswith(f"{image_id}-")
    stamp = cached[0].stat().st_mtime_ns
    assert client.get(f"/thumb/{image_id}").content == first.content
    assert cached[0].stat().st_mtime_ns == stamp  # made once, then served from the cache

    os.utime(path, ns=(stamp, stamp + 10**9))  # the file changed: a new thumbnail replaces the old one
    assert client.get(f"/thumb/{image_id}").status_code == 200
    again = list((lexsearch_home / "thumbs").rglob("*.jpg"))
    assert len(again) == 1 and again[0] != cached[0]


def _bad_paths(real_path: str) -> list[str]:
    q = urllib.parse.quote
    out = []
    for prefix in ("/image/", "/thumb/", "/api/explain/", "/api/heatmap/", "/api/similar/", "/static/"):
        out += [
            prefix + "0",
            prefix + "99999",
            prefix + "-1",
            prefix + "01",
            prefix + "abc",
            prefix + "..",
            prefix + "%2e%2e",
            prefix + "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
            prefix + "..%2f..%2fetc%2fpasswd",
            prefix + "1/../..",
            prefix + "1/../../etc/passwd",
            prefix + "../../../../etc/passwd",
            prefix + "/etc/passwd",
            prefix + "%2Fetc%2Fpasswd",
            prefix + q(real_path, safe=""),
            prefix + q(real_path),
            prefix + "1%00",
            prefix + "1.png",
            prefix + "app.py",
        ]
    return out + ["/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/static/../app.py"]


def _raw_asgi_get(app, raw: str) -> tuple[int, bytes]:
    """One request straight into the ASGI app with ``raw`` as the path, decoded the way uvicorn decodes it
    (an HTTP client would normalise '..' away before sending)."""
    import anyio

    path = urllib.parse.unquote(raw)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": raw.encode(),
        "query_string": b"word=red" if "heatmap" in raw else b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    anyio.run(app, scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


def _no_file_in(body: bytes, real_path: str) -> None:
    assert b"\x89PNG" not in body and b"\xff\xd8" not in body and b"root:" not in body
    assert Image.open(real_path).tobytes()[:64] not in body


def test_unknown_ids_and_traversal_get_404_in_process(service):
    app = create_app(service)
    real = sorted(service.collection.image_paths(range(1, 100)).values())[0]
    for raw in _bad_paths(real):
        status, body = _raw_asgi_get(app, raw)
        assert status == 404, (raw, status, body[:80])
        _no_file_in(body, real)


def test_unknown_ids_and_traversal_get_404_over_http(service):
    """The same against the real server, sent byte for byte through a socket (no client normalisation)."""
    server = Server(service, "127.0.0.1", 0)
    server.start_in_thread()
    real = sorted(service.collection.image_paths(range(1, 100)).values())[0]
    try:
        for raw in _bad_paths(real)[::3] + [
            "/image/1/../../etc/passwd",
            "/image/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        ]:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
                s.sendall(f"GET {raw} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
                reply = b""
                while chunk := s.recv(65536):
                    reply += chunk
            status = int(reply.split(b" ", 2)[1]) if reply else 0
            # uvicorn itself may refuse a malformed target with 400; it never answers 200 with a file.
            assert status in (404, 400), (raw, reply[:120])
            _no_file_in(reply.partition(b"\r\n\r\n")[2], real)
    finally:
        server.stop()


def test_page_is_offline_and_locked_down(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and page.headers["x-content-type-options"] == "nosniff"
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/static/app.js" in refs and "/static/style.css" in refs
    assert all(r.startswith("/") for r in refs), refs  # nothing from another host: works offline
    for name in ("app.js", "style.css"):
        body = client.get(f"/static/{name}").text
        assert not re.search(r"https?://", body), name
    assert 'id="q"' in page.text and "+word" in page.text and "-word" in page.text  # the query syntax


def test_loopback_only_hosts_when_bound_to_loopback(service):
    app = create_app(service, allowed_hosts=["127.0.0.1", "localhost"])
    ok = TestClient(app, base_url="http://127.0.0.1").get("/api/info")
    assert ok.status_code == 200
    rebinding = TestClient(app, base_url="http://attacker.example").get("/api/info")
    assert rebinding.status_code == 400


def test_heatmap_endpoint(service, client):
    image_id = sorted(service.collection.image_paths(range(1, 100)))[0]
    word = client.get(f"/api/explain/{image_id}").json()["words"][0]["word"]
    resp = client.get(f"/api/heatmap/{image_id}", params={"word": word})
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
    assert max(Image.open(io.BytesIO(resp.content)).size) >= 512
    assert client.get(f"/api/heatmap/{image_id}", params={"word": "\u65e5\u672c"}).status_code == 400
    assert client.get(f"/api/heatmap/{image_id}").status_code == 400


# -------------------------------------------------------------------------------------------- the CLI
def test_serve_binds_loopback_and_warns_for_other_hosts(small_collection, monkeypatch):
    _, col = small_collection
    seen = {}

    def fake_serve(self):
        seen["addr"] = self.sock.getsockname()[0]
        self.sock.close()

    monkeypatch.setattr(Server, "serve", fake_serve)
    res = CliRunner().invoke(cli, ["serve", "--collection", str(col), "--port", "0", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert seen["addr"] == "127.0.0.1" and "http://127.0.0.1:" in res.stdout and "Warning" not in res.output
    res = CliRunner().invoke(cli, ["serve", "--collection", str(col), "--port", "0", "--host", "0.0.0.0"])
    assert res.exit_code == 0, res.output
    assert seen["addr"] == "0.0.0.0" and "anyone who can reach this machine" in res.stderr


def test_serve_port_in_use_is_one_line(small_collection):
    _, col = small_collection
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        res = CliRunner().invoke(cli, ["serve", "--collection", str(col), "--port", str(port)])
    assert res.exit_code != 0 and "cannot listen on 127.0.0.1" in res.output and "Traceback" not in res.output


def test_query_uses_a_running_server_for_the_same_collection(
    small_collection, service, lexsearch_home, tmp_path
):
    _, col = small_collection
    local = _cli_json(col, "--top", "3", "--expand")
    server = Server(service, "127.0.0.1", 0)
    server.start_in_thread()
    try:
        records = list((lexsearch_home / "servers").glob("*.json"))
        assert len(records) == 1
        rec = json.loads(records[0].read_text())
        assert rec["port"] == server.port and rec["pid"] == os.getpid() and rec["collection"] == str(col)
        res = CliRunner().invoke(
            cli, ["-v", "query", QUERY, "--collection", str(col), "--json", "--top", "3", "--expand"]
        )
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout) == local
        assert f"answered by the running server at http://127.0.0.1:{server.port}" in res.stderr
        table = CliRunner().invoke(cli, ["query", QUERY, "--collection", str(col), "--top", "3", "--expand"])
        assert table.exit_code == 0 and local[0]["path"] in table.stdout
        # Another collection is not answered by this server.
        other = CliRunner().invoke(cli, ["-v", "query", QUERY, "--collection", str(tmp_path / "none")])
        assert (
            other.exit_code != 0 and "No collection" in other.output and "running server" not in other.output
        )
        # A server's usage errors come back as the same one line.
        empty = CliRunner().invoke(cli, ["query", "-red", "--collection", str(col)])
        assert empty.exit_code != 0 and "only excludes" in empty.output
    finally:
        server.stop()
    assert not list((lexsearch_home / "servers").glob("*.json"))  # the record goes with the server
    res = CliRunner().invoke(
        cli, ["-v", "query", QUERY, "--collection", str(col), "--json", "--top", "3", "--expand"]
    )
    assert res.exit_code == 0 and json.loads(res.stdout) == local and "running server" not in res.stderr


def test_stale_or_silent_records_are_ignored(small_collection, lexsearch_home):
    _, col = small_collection
    folder = discovery.servers_dir()
    dead = folder / "999999-1.json"
    dead.write_text(
        json.dumps({"host": "127.0.0.1", "port": 1, "pid": 2**22 + 12345, "collection": str(col)})
    )
    with socket.socket() as silent:  # alive (our pid) and listening, but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        quiet = folder / f"{os.getpid()}-{port}.json"
        quiet.write_text(
            json.dumps({"host": "127.0.0.1", "port": port, "pid": os.getpid(), "collection": str(col)})
        )
        assert discovery.find(col) is None
    assert not dead.exists() and quiet.exists()
    res = CliRunner().invoke(cli, ["query", QUERY, "--collection", str(col), "--json", "--expand"])
    assert res.exit_code == 0 and isinstance(json.loads(res.stdout), list)


def test_serve_command_runs_until_interrupted(small_collection, lexsearch_home):
    """The real command in its own process: prints the URL, answers, and on Ctrl-C stops and cleans up."""
    import signal
    import subprocess
    import sys
    import urllib.request

    _, col = small_collection
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lexsearch",
            "serve",
            "--collection",
            str(col),
            "--port",
            "0",
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert url, (line, proc.stderr.read() if proc.poll() is not None else "")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url.group(0) + "/api/info", timeout=30) as resp:
            assert json.loads(resp.read())["collection"] == str(col)
        assert len(list((lexsearch_home / "servers").glob("*.json"))) == 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) in (0, 130)  # 130: the shell convention for a Ctrl-C exit
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not list((lexsearch_home / "servers").glob("*.json"))
    assert "Traceback" not in proc.stderr.read()


def test_stale_results_through_the_server(tiny_model_dir, tmp_path):
    """A match whose file is gone is left out by the server too, and the CLI still says a re-index is due."""
    from fakes import make_images

    photos = make_images(tmp_path / "photos", 4)
    col_path = tmp_path / "col"
    args = ["index", str(tmp_path / "photos"), "--model", str(tiny_model_dir), "--collection", str(col_path)]
    assert CliRunner().invoke(cli, [*args, "--quiet"]).exit_code == 0
    photos[0].unlink()
    with Collection.open(col_path, readonly=True) as col:
        server = Server(SearchService(col, load_encoder(col, device="cpu")), "127.0.0.1", 0)
        server.start_in_thread()
        try:
            res = CliRunner().invoke(
                cli, ["-v", "query", QUERY, "--collection", str(col_path), "--expand", "--json", "--top", "4"]
            )
        finally:
            server.stop()
    assert res.exit_code == 0, res.output
    assert "answered by the running server" in res.stderr
    assert "1 matching file no longer exists" in res.stderr
    assert str(photos[0]) not in [r["path"] for r in json.loads(res.stdout)]


def test_warm_up_merges_lora_without_changing_query_vectors(small_collection):
    from lexsearch.model import Encoder

    _, col_path = small_collection
    texts = ["a red circle", "large blue star at the top", "small green square", "purple"]
    with Collection.open(col_path, readonly=True) as col:
        service = SearchService(col, load_encoder(col, device="cpu"))
        plain = Encoder.load(col.meta["model_path"], device="cpu")
        service.warm_up()
        # peft: every LoRA layer has its adapter folded into the base weights
        lora = [m for m in service.encoder.model.lm.modules() if hasattr(m, "lora_A")]
        assert lora and all(m.merged for m in lora)
        merged, before = service.encoder.encode_texts(texts), plain.encode_texts(texts)
    assert np.abs((merged.sparse - before.sparse).toarray()).max() < 1e-5
    assert [sorted(r.indices) for r in merged.sparse] == [sorted(r.indices) for r in before.sparse]


def test_notes_print_the_same_whoever_searched(small_collection, service, monkeypatch):
    """A search's notes (``Results.notes``) reach stderr as the same lines from a search here, from a server
    through the full command, and from a server through the quick path of a fresh process; the API sends
    them in a header."""
    import subprocess
    import sys

    from lexsearch.search import query as query_module
    from lexsearch.serve import service as service_module

    _, col = small_collection
    real = query_module.search
    note = "'caf\u00e9' is new to the model \x1b[31m"  # a control character is shown escaped

    def noted(*args, **kwargs):
        results = real(*args, **kwargs)
        results.notes.append(note)
        return results

    monkeypatch.setattr(query_module, "search", noted)
    monkeypatch.setattr(service_module, "search", noted)
    args = ["query", QUERY, "--collection", str(col), "--top", "2", "--expand"]
    alone = CliRunner().invoke(cli, args)
    assert alone.exit_code == 0 and alone.stderr == "note: 'caf\u00e9' is new to the model \\x1b[31m\n"
    assert alone.stdout.count(".png") == 2
    assert json.loads(
        TestClient(create_app(service)).get("/api/search", params={"q": QUERY}).headers["lexsearch-notes"]
    ) == [note]
    server = Server(service, "127.0.0.1", 0)
    server.start_in_thread()
    try:
        full = CliRunner().invoke(cli, ["-v", *args])
        env = dict(os.environ, LC_ALL="C.UTF-8", PYTHONIOENCODING="")
        quick = subprocess.run([sys.executable, "-m", "lexsearch", "-v", *args], capture_output=True, env=env)
    finally:
        server.stop()
    said = re.compile(r"answered by the running server at http://127\.0\.0\.1:\d+ \(pid \d+\)\n")
    for code, out, err in (
        (full.exit_code, full.stdout, full.stderr),
        (quick.returncode, quick.stdout.decode(), quick.stderr.decode()),
    ):
        assert said.search(err), err
        assert (code, out, said.sub("", err)) == (0, alone.stdout, alone.stderr)


def test_api_explain_text_is_cli_explain_text_json(small_collection, client):
    """The page's "your query means" row and `lexsearch explain --text T --json` are one answer."""
    _, col = small_collection
    for text in (QUERY, "red +circle -blue"):
        res = CliRunner().invoke(cli, ["explain", "--text", text, "--collection", str(col), "--json"])
        assert res.exit_code == 0, res.output
        resp = client.get("/api/explain", params={"text": text})
        assert resp.status_code == 200 and resp.json() == json.loads(res.stdout)
        assert resp.json()["text"] == text and len(resp.json()["words"]) > 10


def test_api_explain_text_errors_are_the_querys(client):
    for params, needle in (
        ({}, "give the text"),
        ({"text": "  "}, "empty"),
        ({"text": "-red"}, "only excludes"),
        ({"text": "x" * 1001}, "the limit is 1000"),
    ):
        resp = client.get("/api/explain", params=params)
        assert resp.status_code == 400 and needle in resp.json()["error"], (params, resp.text)
