"""`lexsearch query` says the same with and without a running `lexsearch serve`: awkward queries, run as real
processes (the command line as a user types it, non-UTF-8 bytes included) once alone and once with a server
of the collection running; the same stdout, stderr and exit status, and no traceback in either, nor in the
server's log. A heat map's word follows one rule in `explain --word` and on the page."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest

from lexsearch.limits import MAX_QUERY_CHARS, MAX_TOP

# The awkward queries: the arguments after `lexsearch query` (bytes where the shell would pass bytes).
QUERIES: list[list[str | bytes]] = [
    ["zebra"],  # no word the model knows (the demo's own example)
    ["cat"],  # a word the tiny vocabulary has only as pieces
    ["the", "of", "a"],  # function words only
    ["-red"],  # only an exclusion
    ["red -red"],  # a word and its exclusion: an empty result
    ["+zebra red"],  # a +word the vocabulary cannot represent
    ["   "],  # nothing but spaces
    ["x" * 10_000],  # 10,000 characters
    ["x" * MAX_QUERY_CHARS],  # the longest query accepted
    ["\U0001f600" * MAX_QUERY_CHARS],  # ... in characters of 4 UTF-8 bytes (a 12 KB request line)
    ["\u65e5\u672c\u8a9e green"],  # non-ASCII
    ["caf\u00e9 green", "--json"],
    [b"caf\xe9 green"],  # bytes that are not UTF-8 (a Latin-1 terminal)
    ["a red circle", "--top", "1"],  # --top at its limits and past them
    ["a red circle", "--top", str(MAX_TOP)],
    ["a red circle", "--top", str(MAX_TOP + 1)],
    ["a red circle", "--top", "0"],
    ["a red circle", "--top", "5000"],
    ["a red circle", "--top", "\u00b2"],  # a digit to str.isdigit, not to int
    ["a red circle", "--json", "--top", "3"],
    ["a red circle", "--paths"],
    ["a red circle", "-0", "--expand"],
    ["a red circle", "--no-rerank", "--top", "2"],
    ["a red circle", "--min-score", "0.15"],
    ["a red circle", "--min-score", "5"],  # every result below it
    ['"red circle" -"blue square"'],
    [
        "a red circle",
        "--after",
        "2000",
        "--orientation",
        "landscape",
        "--sort",
        "date",
        "--json",
    ],  # photo filters
    ["a red circle before:2000 camera:pixel"],  # ... as words: no photo passes
    ["a red circle", "--after", "2023-13"],  # a date that is not one
]
# `explain IMAGE --heatmap OUT --word WORD` against the page's /api/heatmap/ID?word=WORD.
WORDS = ["zzz", "cat", "red", "\u65e5\u672c"]


def _env() -> dict[str, str]:
    # A UTF-8 locale, as a user's terminal has: bytes that are not UTF-8 reach Python as surrogates.
    return dict(os.environ, LC_ALL="C.UTF-8", PYTHONIOENCODING="", OMP_NUM_THREADS="1")


def _lexsearch(*args: str | bytes) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lexsearch", *args], capture_output=True, env=_env(), timeout=300, check=False
    )


def _run_all(col, *options: str) -> list[tuple[int, bytes, bytes]]:
    out = []
    for args in QUERIES:
        res = _lexsearch(*options, "query", *args, "--collection", str(col))
        out.append((res.returncode, res.stdout, res.stderr))
    return out


class _Serve:
    """`lexsearch serve` in its own process, its log (stderr) kept in a file."""

    def __init__(self, col, log_path) -> None:
        self.log_path = log_path
        self.log = open(log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lexsearch", "serve", "--collection", str(col), "--port", "0"]
            + ["--device", "cpu", "--threads", "1"],
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=_env(),
        )
        line = self.proc.stdout.readline().decode()
        found = re.search(r"http://127\.0\.0\.1:\d+", line)
        if not found:
            self.stop()
            raise AssertionError(f"no server: {line!r} {log_path.read_text(errors='replace')}")
        self.url = found.group(0)

    def get(self, target: str) -> tuple[int, bytes]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.url + target, timeout=120) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def serving(small_collection, tmp_path):
    _, col = small_collection
    server = _Serve(col, tmp_path / "serve.log")
    try:
        yield server
    finally:
        server.stop()


def _shown(args) -> str:
    return " ".join(repr(a[:40]) for a in args)


def test_every_query_says_the_same_with_and_without_a_server(small_collection, tmp_path):
    _, col = small_collection
    alone = _run_all(col)
    for args, (code, out, err) in zip(QUERIES, alone):
        assert b"Traceback" not in err, (_shown(args), err.decode(errors="replace"))
        # An answer, or a refusal whose last line says why (Click's own adds its usage line before it).
        assert code == 0 or (code == 2 and not out and err.splitlines()[-1].startswith(b"Error: ")), (
            _shown(args),
            code,
            out,
            err,
        )

    server = _Serve(col, tmp_path / "serve.log")
    try:
        # -v: each answer says whether the server gave it (that line aside, stderr must be the same).
        served = _run_all(col, "-v")
    finally:
        log = server.stop()
    said = re.compile(rb"answered by the running server at http://127\.0\.0\.1:\d+ \(pid \d+\)\n")
    for args, a, (code, out, err) in zip(QUERIES, alone, served):
        # An answer came from the server, not from a fallback to searching alone.
        assert (a[0] != 0) or said.search(err), (_shown(args), err)
        assert (code, out, said.sub(b"", err)) == a, (_shown(args), a, (code, out, err))
    assert "Traceback" not in log and "Exception" not in log and "ERROR" not in log, log

    # What the cases show: the queries of the bug reports are answered, the limits refused alike.
    def answer(*args):
        return alone[QUERIES.index(list(args))]

    assert answer("zebra") == (0, b"No image matches this query.\n", b"")
    assert answer("red -red")[1] == b"No image matches this query.\n"
    assert answer("a red circle", "--top", "5000")[0] == 0
    assert answer("a red circle", "--top", str(MAX_TOP))[0] == 0
    assert answer("a red circle", "--top", str(MAX_TOP + 1))[0] == 2
    assert answer(b"caf\xe9 green")[2] == (
        b"Error: The query is not UTF-8 text (caf\\xe9 green); is the terminal set to another encoding? "
        b"Type it again in UTF-8.\n"
    )
    assert b"10000 characters" in answer("x" * 10_000)[2]
    assert answer("x" * MAX_QUERY_CHARS)[0] == 0
    assert answer("a red circle", "--paths")[1].count(b"\n") > 1


def test_a_heatmap_word_follows_one_rule_in_explain_and_on_the_page(small_collection, serving, tmp_path):
    _, col = small_collection
    status, body = serving.get("/api/search?" + urllib.parse.urlencode({"q": "a red circle", "top": 1}))
    assert status == 200
    row = json.loads(body)[0]
    for word in WORDS:
        out = tmp_path / "map.png"
        res = _lexsearch(
            "explain", row["path"], "--collection", str(col), "--heatmap", str(out), "--word", word
        )
        status, body = serving.get(f"/api/heatmap/{row['id']}?" + urllib.parse.urlencode({"word": word}))
        assert b"Traceback" not in res.stderr, res.stderr
        if res.returncode == 0:
            assert status == 200 and body.startswith(b"\x89PNG"), (word, status, body[:100])
        else:
            assert status == 400, (word, status, body[:100])
            error = json.loads(body)["error"]
            assert res.stderr.decode() == f"Error: {error}\n", (word, res.stderr, error)
    assert "Traceback" not in serving.stop()
