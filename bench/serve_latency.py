"""Server time of a new query on a warm `lexsearch serve`: encode + search, no thumbnails.

Builds a collection of N images (default 10,000) for the tiny model: the image vectors are synthetic (sparse,
L2-normalised, ~40 active words each, written through the store's write API; each image's file is a hard
link to one small PNG, as a result must have a file), the model is a real tiny
LexVLA checkpoint whose text tower encodes every query. Then starts the real server (uvicorn, loopback) and
sends Q new queries (never seen before, so none is answered from the query cache) to /api/search, and prints
p50/p90 of the server's own time (its Server-Timing header: encode + candidates + re-rank + explanations)
and of the whole HTTP round trip.

    python bench/serve_latency.py                 # 10k images, 200 queries
    python bench/serve_latency.py --images 100000 --queries 100
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star", "cross"]
SIZES = ["small", "large", "tiny", "big"]
PLACES = ["on a plain background", "on a striped background", "at the top", "at the bottom", "on the left"]
TEXTS = [f"a {s} {c} {sh} {p}" for s in SIZES for c in COLOURS for sh in SHAPES for p in PLACES]


def build(root: Path, n_images: int, seed: int = 0) -> tuple[Path, Path]:
    from lexsearch.index import model_meta
    from lexsearch.index.store import Changes, Collection, NewImage
    from lexsearch.model.lazy import LazyEncoder
    from lexsearch.tiny.builder import build_tiny_checkpoint

    model = build_tiny_checkpoint(root / "model", TEXTS, seed=seed)
    enc = LazyEncoder(model, device="cpu")
    vocab, dense_dim = enc.vocab_size, enc.dense_dim
    rng = np.random.default_rng(seed)
    # Every image needs a file (a result whose file is gone is left out): hard links to one small PNG.
    from PIL import Image

    photos = root / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 64), (120, 120, 120)).save(photos / "base.png")
    col_path = root / "col"
    with Collection.open(col_path, readonly=False) as col:
        col.bind_model(model_meta(enc, str(model)), "rebuild")
        batch = []
        for i in range(n_images):
            path = photos / f"{i:07d}.png"
            try:
                os.link(photos / "base.png", path)
            except OSError:  # a file system without hard links
                shutil.copyfile(photos / "base.png", path)
            k = int(rng.integers(20, 60))
            terms = np.sort(rng.choice(vocab, size=min(k, vocab), replace=False)).astype(np.uint32)
            w = rng.gamma(1.0, 1.0, terms.size).astype(np.float32)
            dense = None
            if dense_dim:
                dense = rng.standard_normal(dense_dim).astype(np.float32)
                dense /= np.linalg.norm(dense)
            batch.append(
                NewImage(
                    str(path),
                    1000,
                    i,
                    f"h{i}",
                    64,
                    64,
                    None,
                    terms,
                    w / np.linalg.norm(w),
                    dense,
                )
            )
            if len(batch) == 2000:
                col.apply(Changes(insert=batch))
                batch = []
        if batch:
            col.apply(Changes(insert=batch))
        col.save_dense()
    return model, col_path


def new_queries(n: int, seed: int = 1) -> list[str]:
    words = COLOURS + SHAPES + SIZES + ["background", "striped", "plain", "top", "bottom", "left"]
    rng = random.Random(seed)
    seen: set[str] = set()
    combos = [" ".join(c) for r in (2, 3) for c in itertools.permutations(words, r)]
    rng.shuffle(combos)
    for q in combos:
        if q not in seen:
            seen.add(q)
        if len(seen) == n:
            break
    return sorted(seen, key=lambda _: rng.random())


def measure(service, queries: list[str], top: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(server ms, round-trip ms, mean results) of ``queries`` sent to a real server over ``service``."""
    from lexsearch.serve.server import Server

    server = Server(service, "127.0.0.1", 0)
    server.start_in_thread()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    server_ms, round_ms, hits = [], [], []
    try:
        for q in queries:
            url = f"{server.url}/api/search?{urllib.parse.urlencode({'q': q, 'top': top})}"
            t = time.perf_counter()
            with opener.open(url) as resp:
                body = json.loads(resp.read())
                timing = resp.headers["Server-Timing"]
            round_ms.append(1000 * (time.perf_counter() - t))
            server_ms.append(float(timing.split("dur=")[1]))
            hits.append(len(body))
    finally:
        server.stop()
    # The first few queries warm the caches of postings the later ones share; report the rest.
    return np.array(server_ms[5:]), np.array(round_ms[5:]), float(np.mean(hits[5:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--top", type=int, default=24, help="results per query (the page's first page)")
    args = ap.parse_args()

    os.environ.setdefault("LEXSEARCH_HOME", tempfile.mkdtemp(prefix="lexsearch-bench-home-"))
    import torch

    from lexsearch.index.store import Collection
    from lexsearch.search import load_encoder
    from lexsearch.serve import SearchService

    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="lexsearch-bench-") as tmp:
        t0 = time.perf_counter()
        _, col_path = build(Path(tmp), args.images)
        print(f"built {args.images} synthetic images in {time.perf_counter() - t0:.1f} s")
        queries = new_queries(2 * (args.queries + 5))
        with Collection.open(col_path, readonly=True) as col:
            service = SearchService(col, load_encoder(col, device="cpu"))
            service.warm_up()
            # Two settings side by side, each with its own new queries (none answered from the query cache).
            runs = []
            for label, threads, part in (
                (f"default ({default_threads} torch threads)", default_threads, queries[: args.queries + 5]),
                ("--threads 1", 1, queries[args.queries + 5 :]),
            ):
                torch.set_num_threads(threads)
                runs.append((label, *measure(service, part, args.top)))
    print(f"{args.queries} new queries per setting over {args.images} images, top {args.top}")
    for label, s, r, hits in runs:
        print(
            f"{label:28s} server time (encode + search) p50 {np.percentile(s, 50):5.1f} ms  "
            f"p90 {np.percentile(s, 90):5.1f} ms | round trip p50 {np.percentile(r, 50):5.1f} ms  "
            f"p90 {np.percentile(r, 90):5.1f} ms | {hits:.1f} results"
        )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    import urllib.parse

    main()
