"""Time of a new query through a Gemma text tower (the ``mini`` model): warm server, in-process, student.

Indexes N images of a caption folder with the model (prints the index time), then:

1. starts ``lexsearch serve`` on that collection (one server per ``--precisions`` entry) and sends Q distinct
   new queries over HTTP (a fresh collection, every text different: none is answered from the query cache);
   prints p50/p95 of the round trip and of the server's own time (its Server-Timing header);
2. in this process: the LM's encoding of a new query (``encode_texts``) as the server runs it, float32 and
   then bfloat16, and how close the two are over the same queries (cosine of the lexical vectors, top-10
   word overlap);
3. when the model folder has a student (``lexsearch distill``): ``lexsearch query`` in a fresh process (no
   server), wall time for a query the student knows and for one it routes to the LM (a word no training
   caption used).

    python bench/gemma_query_latency.py --model /tmp/fast/model --images /tmp/i31/toy/val
    python bench/gemma_query_latency.py --model M --images DIR --n-images 200 --queries 60 --threads 2

Set LEXSEARCH_HOME to the home holding the model's converted base (the Gemma GGUF conversion).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "star", "cross"]
FRAMES = ["a {} {} and a {} {}", "an image with a {} {} and a {} {}", "there is a {} {} with a {} {}"]


def new_queries(n: int, seed: int) -> list[str]:
    """``n`` distinct queries of the captions' words (~15 prompt tokens each, the prompt's suffix included)."""
    rng = random.Random(seed)
    pairs = list(itertools.product(COLOURS, SHAPES))
    out: dict[str, None] = {}
    while len(out) < n:
        (c1, s1), (c2, s2) = rng.sample(pairs, 2)
        out.setdefault(rng.choice(FRAMES).format(c1, s1, c2, s2))
    return list(out)


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def line(label: str, ms: list[float]) -> str:
    return f"{label:44s} p50 {pct(ms, 50):7.1f} ms  p95 {pct(ms, 95):7.1f} ms  (n={len(ms)})"


def load() -> str:
    return f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs"


def lexsearch(*args: str) -> list[str]:
    """The command line of ``lexsearch ARGS``, the one installed beside this Python."""
    exe = Path(sys.executable).parent / "lexsearch"
    return [str(exe) if exe.exists() else "lexsearch", *args]


def index(model: Path, images: Path, n: int, root: Path) -> Path:
    photos = root / "photos"
    photos.mkdir()
    files = sorted(p for p in (images / "images").iterdir() if p.suffix.lower() in {".png", ".jpg"})[:n]
    for p in files:
        try:
            os.link(p, photos / p.name)
        except OSError:  # another file system
            shutil.copy(p, photos)
    col = root / "col"
    t = time.perf_counter()
    out = subprocess.run(
        lexsearch("index", str(photos), "--model", str(model), "--collection", str(col), "--device", "cpu"),
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        sys.exit(out.stderr)
    print(f"indexed {len(files)} images in {time.perf_counter() - t:.1f} s (wall, fresh process)  [{load()}]")
    return col


def via_server(col: Path, queries: list[str], threads: int, precision: str) -> None:
    cmd = lexsearch("serve", "--collection", str(col), "--port", "0", "--threads", str(threads))
    proc = subprocess.Popen(
        [*cmd, "--precision", precision], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        t = time.perf_counter()
        url = None
        while url is None:
            text = proc.stdout.readline()
            if not text:
                sys.exit(f"lexsearch serve ended: {proc.stderr.read()}")
            m = re.search(r"(http://\S+?)/\s", text)
            url = m.group(1) if m else None
        ready = time.perf_counter() - t
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        rtt, server = [], []
        for q in queries:
            t = time.perf_counter()
            with opener.open(f"{url}/api/search?{urllib.parse.urlencode({'q': q, 'top': 10})}") as resp:
                json.loads(resp.read())
                timing = resp.headers.get("Server-Timing", "")
            rtt.append(1000 * (time.perf_counter() - t))
            if "dur=" in timing:
                server.append(float(timing.split("dur=")[1].split(",")[0]))
        label = f"serve --threads {threads} --precision {precision}"
        print(f"{label}: ready in {ready:.1f} s")
        print(line("  HTTP round trip, new query", rtt[3:]))
        if server:
            print(line("  server time (encode + search)", server[3:]))
        print(f"  [{load()}]")
    finally:
        proc.terminate()
        proc.wait(30)


def in_process(model: Path, queries: list[str], threads: int) -> None:
    import torch

    from lexsearch.model.encoder import Encoder

    torch.set_num_threads(threads)
    enc = Encoder.load(model, device="cpu")
    enc.model.lm.merge_adapter()  # as the server's warm-up
    runs = {}

    def encode_all(qs: list[str]) -> tuple[list[float], list[np.ndarray]]:
        ms, vecs = [], []
        for q in qs:
            t = time.perf_counter()
            out = enc.encode_texts([q], sparsify="none")
            ms.append(1000 * (time.perf_counter() - t))
            vecs.append(out.sparse.toarray()[0])
        return ms, vecs

    half = len(queries) // 2
    with ThreadPoolExecutor(1) as pool:  # as a server ran them before warm-up prepared the queries
        enc.encode_texts(["warm up"])
        ms_before, _ = pool.submit(encode_all, queries[:half]).result()
    print(line(f"in-process encode_texts, {threads} thr, fp32 unprepared", ms_before[3:]))
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        enc.model.prepare_queries(dtype)
        enc.encode_texts(["warm up"])
        # A server encodes in a worker thread (its request pool); on a busy machine the main thread's
        # OpenMP team was measured far slower, so both are shown, each on half of the queries.
        with ThreadPoolExecutor(1) as pool:
            ms_worker, vecs_worker = pool.submit(encode_all, queries[:half]).result()
        ms_main, vecs_main = encode_all(queries[half:])
        runs[name] = np.stack(vecs_worker + vecs_main)
        print(line(f"in-process encode_texts, {threads} thr, {name}, worker", ms_worker[3:]))
        print(line(f"in-process encode_texts, {threads} thr, {name}, main", ms_main[3:]))
    a, b = runs["fp32"], runs["bf16"]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    top = [len(set(np.argsort(-x)[:10]) & set(np.argsort(-y)[:10])) / 10 for x, y in zip(a, b)]
    print(
        f"  bf16 vs fp32 over {len(queries)} queries: cosine min {cos.min():.5f} mean {cos.mean():.5f}; "
        f"top-10 words overlap mean {np.mean(top):.3f} min {min(top):.1f}  [{load()}]"
    )


def fresh_process(col: Path, model: Path) -> None:
    from lexsearch.model.student import student_exists

    if not student_exists(model):
        print(
            f"no student in {model}: run `lexsearch distill --model {model} --data CAPTIONS` for its figures"
        )
        return
    for label, texts in (
        ("student (known words)", ["a red star and a blue cross", "a green circle", "an orange square"]),
        ("routed to the LM (unseen words)", ["un cercle rouge", "a crimson circle", "ein blauer stern"]),
    ):
        ms, note = [], ""
        for q in texts:
            t = time.perf_counter()
            out = subprocess.run(
                lexsearch("query", q, "--collection", str(col)), capture_output=True, text=True
            )
            ms.append(1000 * (time.perf_counter() - t))
            if out.returncode != 0:
                sys.exit(out.stderr)
            note = note or next((x for x in out.stderr.splitlines() if "uses the LM" in x), "")
        print(
            f"fresh `lexsearch query`, {label}: wall median {statistics.median(ms):.0f} ms "
            f"({', '.join(f'{x:.0f}' for x in ms)})" + (f"\n  {note}" if note else "")
        )
    print(f"  [{load()}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--images", required=True, type=Path, help="a caption folder (its images/ are indexed)")
    ap.add_argument("--n-images", type=int, default=200)
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the server and in-process")
    ap.add_argument("--precisions", default="auto,fp32", help="one server run each (auto | fp32 | bf16)")
    ap.add_argument(
        "--skip", default="", help="parts to leave out: serve, inprocess, fresh (comma-separated)"
    )
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    print(f"start [{load()}]")
    with tempfile.TemporaryDirectory(prefix="lexsearch-gemma-bench-") as tmp:
        # A copy of the model folder whose student is set aside while the LM is measured (a server of a
        # model with a student answers the captions' words with it), and put back for the fresh processes.
        model = Path(tmp) / "model"
        shutil.copytree(args.model, model, ignore=shutil.ignore_patterns("train_state*"))
        aside = Path(tmp) / "student"
        aside.mkdir()
        for f in model.glob("student.*"):
            f.rename(aside / f.name)
        col = index(model, args.images, args.n_images, Path(tmp))
        if "serve" not in skip:
            for i, precision in enumerate(filter(None, args.precisions.split(","))):
                via_server(col, new_queries(args.queries + 3, seed=10 + i), args.threads, precision)
        if "inprocess" not in skip:
            in_process(model, new_queries(2 * (args.queries + 3), seed=99), args.threads)
        if "fresh" not in skip:
            for f in aside.iterdir():
                f.rename(model / f.name)
            fresh_process(col, model)


if __name__ == "__main__":
    main()
