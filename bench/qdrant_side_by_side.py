"""A collection in Qdrant beside the embedded store: the store's share of a query, and bytes per image.

    python bench/qdrant_side_by_side.py                          # 100k images (Edge), 2k (local mode)
    python bench/qdrant_side_by_side.py --images 20000 --local-images 2000

Synthetic images as in bench/store_1m.py (V = 17,149, ~250 Zipf terms per image, lognormal weights, a
256-d dense vector; queries of 24 terms). The same images go into

- the embedded store (``Collection.apply`` in commits of 1,024, posting files flushed, FAISS saved);
- Qdrant Edge (``qdrant-edge-py``: Qdrant's Rust engine in-process, the segment format a server keeps),
  with the payload ``lexsearch index`` writes and float16 vectors, flushed and optimised;
- qdrant-client's local mode (``qdrant:///DIR/NAME``, pure Python, what the tests use), at fewer images.

Per query each home does what the query path asks of it: the candidate stage (top 1,000 of the 24-term
query, only 'ok' images) and the candidates' rows with dense vectors for the re-rank. Printed: p50 / p90
milliseconds per query, the share of the embedded store's 1,000 candidates each Qdrant home also returned,
and bytes per image on disk. Qdrant Edge and local mode are optional installs (skipped if missing).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from store_1m import DENSE_DIM, VOCAB, make_images, make_queries, zipf_cdf  # noqa: E402

from lexsearch.collection.embedded import EmbeddedCollection  # noqa: E402
from lexsearch.collection.qdrant import points as pt  # noqa: E402
from lexsearch.index.store import Changes  # noqa: E402

CANDIDATES = 1000
CHUNK = 1024
MODEL = {
    "model_id": "synthetic",
    "vocab_hash": "synthetic",
    "vocab_size": VOCAB,
    "dense_dim": DENSE_DIM,
    "sparsify": None,
    "model_path": None,
}


def du(path: Path, skip_wal: bool = False) -> int:
    """Bytes of the files under ``path``; ``skip_wal``: without Qdrant's write-ahead log (preallocated in
    32 MB files whatever the collection's size, and emptied as segments take the points)."""
    files = [f for f in Path(path).rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files if not (skip_wal and "wal" in f.relative_to(path).parts))


def components(path: Path) -> dict[str, int]:
    """Bytes of a Qdrant folder by what they hold (the names of its segments' parts), summed over segments."""
    out: dict[str, int] = {}
    for f in Path(path).rglob("*"):
        if f.is_file():
            parts = f.relative_to(path).parts
            kind = parts[2] if parts[0] == "segments" and len(parts) > 2 else parts[0]
            out[kind.split(".")[0]] = out.get(kind.split(".")[0], 0) + f.stat().st_size
    return out


def ms(samples: list[float]) -> str:
    a = np.asarray(samples) * 1000
    return f"p50 {np.percentile(a, 50):7.1f} ms   p90 {np.percentile(a, 90):7.1f} ms"


def images(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    cdf = zipf_cdf()
    rank_to_term = np.random.default_rng(1).permutation(VOCAB)
    for start in range(0, n, CHUNK):
        yield make_images(start, min(CHUNK, n - start), rng, cdf, rank_to_term)


def queries(count: int):
    return make_queries(
        count, np.random.default_rng(2), zipf_cdf(), np.random.default_rng(1).permutation(VOCAB)
    )


def payload(im) -> dict:
    return pt.image_payload(
        im.path, im.size, im.mtime_ns, im.hash, status="ok", width=im.width, height=im.height,
        terms=[int(t) for t in im.terms],
    )  # fmt: skip


# ----------------------------------------------------------------------------------- embedded store
def build_embedded(folder: Path, n: int) -> float:
    t0 = time.perf_counter()
    with EmbeddedCollection.open(folder, readonly=False) as col:
        col.bind_model(MODEL, "rebuild")
        for chunk in images(n):
            col.apply(Changes(insert=chunk))
        col.flush_postings()
        col.save_dense()
    return time.perf_counter() - t0


def query_embedded(folder: Path, qs) -> tuple[list[float], list[np.ndarray]]:
    times, found = [], []
    with EmbeddedCollection.open(folder) as col:
        for terms, weights in qs:
            t0 = time.perf_counter()
            cands = col.candidates(terms, weights, None, k=CANDIDATES)  # one-shot, as `lexsearch query`
            col.forward_block(cands.ids.tolist(), dense=True)
            times.append(time.perf_counter() - t0)
            found.append(cands.ids)
    return times, found


# ----------------------------------------------------------------------------------- Qdrant Edge
def build_edge(folder: Path, n: int) -> float:
    import qdrant_edge as qe

    config = qe.EdgeConfig(
        vectors={
            pt.DENSE: qe.EdgeVectorParams(
                size=DENSE_DIM, distance=qe.Distance.Dot, datatype=qe.VectorStorageDatatype.Float16
            )
        },
        sparse_vectors={pt.SPARSE: qe.EdgeSparseVectorParams(datatype=qe.VectorStorageDatatype.Float16)},
    )
    t0 = time.perf_counter()
    shard = qe.EdgeShard.create(str(folder), config)
    shard.update(qe.UpdateOperation.create_field_index("status", qe.PayloadSchemaType.Keyword))
    for chunk in images(n):
        pts = [
            qe.Point(
                pt.point_id(im.path),
                {
                    pt.SPARSE: qe.SparseVector([int(t) for t in im.terms], pt.half(im.weights).tolist()),
                    pt.DENSE: pt.half(im.dense).tolist(),
                },
                payload(im),
            )
            for im in chunk
        ]
        shard.update(qe.UpdateOperation.upsert_points(pts))
    shard.flush()
    shard.optimize()
    shard.flush()
    shard.close()
    return time.perf_counter() - t0


def query_edge(folder: Path, qs) -> tuple[list[float], list[np.ndarray]]:
    import qdrant_edge as qe

    shard = qe.EdgeShard.load(str(folder))
    ok = qe.Filter(must=[qe.FieldCondition("status", match=qe.MatchValue("ok"))])
    times, found = [], []
    for terms, weights in qs:
        t0 = time.perf_counter()
        vec = qe.SparseVector([int(t) for t in terms], [float(w) for w in weights])
        hits = shard.query(
            qe.QueryRequest(limit=CANDIDATES, query=qe.Query.Nearest(vec, using=pt.SPARSE), filter=ok)
        )
        ids = [h.id for h in hits]
        shard.retrieve(ids, False, True)
        times.append(time.perf_counter() - t0)
        found.append(np.asarray(ids, np.int64))
    shard.close()
    return times, found


# ----------------------------------------------------------------------------------- local mode
def build_local(folder: Path, n: int) -> float:
    from lexsearch.collection.qdrant.build import _vectors
    from lexsearch.collection.qdrant.store import QdrantCollection

    t0 = time.perf_counter()
    with QdrantCollection.open(f"qdrant://{folder}/bench", readonly=False) as col:
        col.bind_model(MODEL, "rebuild")
        m = col._models
        for chunk in images(n):
            col.upsert(
                [
                    m.PointStruct(
                        id=pt.point_id(im.path),
                        vector=_vectors(m, im.terms, im.weights, im.dense),
                        payload=payload(im),
                    )
                    for im in chunk
                ]
            )
    return time.perf_counter() - t0


def query_local(folder: Path, qs) -> tuple[list[float], list[np.ndarray]]:
    from lexsearch.collection.qdrant.store import QdrantCollection

    times, found = [], []
    with QdrantCollection.open(f"qdrant://{folder}/bench") as col:
        for terms, weights in qs:
            t0 = time.perf_counter()
            cands = col.candidates(terms, weights, None, k=CANDIDATES)
            col.forward_block(cands.ids.tolist(), dense=True)
            times.append(time.perf_counter() - t0)
            found.append(cands.ids)
    return times, found


def overlap(paths_a: list[set], paths_b: list[set]) -> float:
    return float(np.mean([len(a & b) / max(1, len(a)) for a, b in zip(paths_a, paths_b)]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--local-images", type=int, default=2_000, help="local mode is pure Python: fewer")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--only", choices=["embedded", "edge", "local"], help="one home (and its reference)")
    ap.add_argument("--dir", help="work folder (default: a temporary one, removed after)")
    args = ap.parse_args(argv)
    work = Path(args.dir or tempfile.mkdtemp(prefix="lexsearch-qdrant-bench-"))
    qs = queries(args.queries)
    # Candidate ids differ by home (row numbers vs path hashes): compare the images by path hash.
    by_row = {}

    def as_points(ids_list, n):
        out = []
        for ids in ids_list:
            out.append({by_row.setdefault(int(i), pt.point_id(_path(int(i) - 1))) for i in ids})
        return out

    try:
        print(f"{args.images:,} synthetic images, V = {VOCAB:,}, dense {DENSE_DIM}-d, {args.queries} queries")
        for label, n, build, query, ids_are_rows in (
            ("embedded store", args.images, build_embedded, query_embedded, True),
            ("Qdrant Edge", args.images, build_edge, query_edge, False),
            ("embedded store (local-mode size)", args.local_images, build_embedded, query_embedded, True),
            ("qdrant-client local mode", args.local_images, build_local, query_local, False),
        ):
            if args.only == "edge" and "local" in label or args.only == "local" and n == args.images:
                continue
            if args.only == "embedded" and "embedded" not in label:
                continue
            folder = work / label.replace(" ", "_").replace("(", "").replace(")", "")
            try:
                seconds = build(folder, n)
            except ImportError as exc:
                print(f"{label:34s} skipped ({exc})")
                continue
            times, found = query(folder, qs)
            found = as_points(found, n) if ids_are_rows else [set(map(int, f)) for f in found]
            line = f"{label:34s} {n:>8,} images  build {seconds:6.1f}s  query {ms(times)}"
            line += (
                f"   {du(folder) / n:8.0f} bytes/image ({du(folder, skip_wal=True) / n:.0f} without a WAL)"
            )
            if ids_are_rows:
                reference = found
            else:
                line += f"   candidates shared with the embedded store: {overlap(reference, found):.3f}"
            print(line, flush=True)
            if label == "Qdrant Edge":
                parts = sorted(components(folder).items(), key=lambda kv: -kv[1])
                print("    per image: " + ", ".join(f"{k} {v / n:.0f} B" for k, v in parts), flush=True)
            if not args.dir:
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


def _path(i: int) -> str:
    return f"/photos/synthetic/{i // 1000:04d}/IMG_{i:07d}.jpg"  # as store_1m.make_images names image i


if __name__ == "__main__":
    main()
