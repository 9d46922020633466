"""Query latency of the candidate + re-rank stages on synthetic collections, next to brute-force baselines.

    python bench/query_latency.py                       # 10k, 100k and 1M images (~4 minutes, ~8 GB)
    python bench/query_latency.py --sizes 10000,100000  # quicker

Synthetic data (see ``make_collection``): each image holds ~250 distinct terms of a 17,149-word vocabulary
drawn with Zipf(1) frequencies (the most common words are in almost every image), lognormal weights,
rows L2-normalised; a query has 24 distinct terms from the same distribution with skewed weights. Postings
are built in memory (not through SQLite) and scored by the very functions ``lexsearch.search`` uses:
``candidates`` (exact and pruned) and ``rerank`` over forward rows, fused with a 512-d dense score.

Printed per size: p50 / p95 / min milliseconds (min: what the machine does when nothing else runs) of
- exact:   candidate stage (24 terms, +top 1000) | re-rank of the 1000 (forward rows + dense fusion)
- pruned:  the same with ``PruneConfig`` (8 full lists + 16 capped at 1% of the images, uint8; 2x pool),
           and its top-1000 overlap (after the exact re-rank) with the exact top 1000
- csr:     scipy CSR (images x terms) @ query over every image, + top 1000 (brute force)
- csc:     scipy CSC column gather of the query's 24 columns @ weights, + top 1000
- dense:   a 512-d float32 matrix @ query over every image, + top 1000 (what rclip does per query)
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time

# One BLAS thread: OpenBLAS's worker threads spin-wait, and on a busy 2-core machine a 1000 x 512 mat-vec
# then takes 10-20 ms instead of 0.2 ms. Set before numpy loads; override from the environment.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import scipy.sparse as sp

from lexsearch.search import (
    DENSE_WEIGHT,
    ForwardRows,
    PostingsIndex,
    PruneConfig,
    candidates,
    query_vector,
    rerank,
    top_k,
)

VOCAB = 17_149  # LexVLA's filtered Llama-2 vocabulary
DRAWS = 400  # Zipf draws per image; repeats of common words leave ~250 distinct terms
QUERY_TERMS = 24
K = 1000
DENSE_DIM = 512


def zipf_probs(vocab: int) -> np.ndarray:
    p = 1.0 / np.arange(1, vocab + 1)
    return p / p.sum()


def make_collection(n: int, rng: np.random.Generator) -> sp.csc_matrix:
    """(n, VOCAB) CSC of image vectors, built per term: each term is in each image independently with the
    probability that DRAWS Zipf(1) draws hit it (the same marginals as drawing per image, far faster)."""
    p = zipf_probs(VOCAB)
    inclusion = -np.expm1(DRAWS * np.log1p(-p))
    rank_to_term = rng.permutation(VOCAB)  # frequent words are not the low ids
    cols: list[np.ndarray] = [np.empty(0, np.int32)] * VOCAB
    for r in range(VOCAB):
        prob = inclusion[r]
        # Gaps between members of a Bernoulli(prob) process are geometric: O(df) per term, not O(n).
        m = int(n * prob * 1.05 + 6 * np.sqrt(n * prob) + 16)
        ids = np.cumsum(rng.geometric(prob, size=m)) - 1
        while ids[-1] < n:
            ids = np.concatenate([ids, ids[-1] + np.cumsum(rng.geometric(prob, size=m))])
        cols[rank_to_term[r]] = ids[: np.searchsorted(ids, n)].astype(np.int32)
    indptr = np.zeros(VOCAB + 1, np.int64)
    np.cumsum([c.size for c in cols], out=indptr[1:])
    indices = np.concatenate(cols)
    del cols
    data = rng.standard_normal(indices.size, dtype=np.float32)
    data *= np.float32(0.7)
    np.exp(data, out=data)
    norms = np.sqrt(np.bincount(indices, weights=np.square(data), minlength=n)).astype(np.float32)
    norms[norms == 0] = 1.0
    data /= norms[indices]
    return sp.csc_matrix((data, indices, indptr), shape=(n, VOCAB)), rank_to_term


def make_queries(count: int, rank_to_term: np.ndarray, rng: np.random.Generator) -> list[tuple]:
    p = zipf_probs(VOCAB)
    out = []
    for _ in range(count):
        ranks = rng.choice(VOCAB, size=QUERY_TERMS, replace=False, p=p)
        w = np.sort(rng.lognormal(0.0, 1.0, QUERY_TERMS))[::-1].astype(np.float32)
        out.append((rank_to_term[ranks].astype(np.intp), w / np.linalg.norm(w)))
    return out


def dense_scores(dense: np.ndarray, ids: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Stands in for ``Collection.dense_scores`` (FAISS reconstruct + inner products) on a numpy matrix."""
    return np.einsum("ij,j->i", dense[ids], q)


def ms(samples: list[float]) -> str:
    a = np.array(samples) * 1e3
    return f"{np.percentile(a, 50):7.2f} {np.percentile(a, 95):7.2f} {a.min():7.2f}"


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def run_size(n: int, n_queries: int, prune: PruneConfig, seed: int) -> None:
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    csc, rank_to_term = make_collection(n, rng)
    csr = csc.tocsr()
    dense = rng.standard_normal((n, DENSE_DIM), dtype=np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    queries = make_queries(n_queries, rank_to_term, rng)
    qdense = [d / np.linalg.norm(d) for d in rng.standard_normal((n_queries, DENSE_DIM), dtype=np.float32)]
    build_s = time.perf_counter() - t0
    index = PostingsIndex.from_csc(csc)
    df = np.diff(csc.indptr)
    touched = [int(df[t].sum()) for t, _ in queries]
    # Warm-up: convert every query term once (what a long-lived process has done after its first queries).
    t0 = time.perf_counter()
    for terms, w in queries:
        candidates(index, terms, w, k=K)
        candidates(index, terms, w, k=K, prune=prune)
    warm_s = time.perf_counter() - t0

    res: dict[str, list[float]] = {k: [] for k in ("cand", "rr", "pcand", "prr", "csr", "csc", "dense")}
    overlaps = []
    for (terms, w), qd in zip(queries, qdense):
        qvec = query_vector(terms, w, VOCAB)
        cands, dt = timed(candidates, index, terms, w, k=K)
        res["cand"].append(dt)
        t = time.perf_counter()
        rows = ForwardRows.from_csr(csr, cands.ids)
        ranked = rerank(rows, qvec, dense_scores(dense, cands.ids, qd), DENSE_WEIGHT)
        res["rr"].append(time.perf_counter() - t)

        pc, dt = timed(candidates, index, terms, w, k=K, prune=prune)
        res["pcand"].append(dt)
        t = time.perf_counter()
        prows = ForwardRows.from_csr(csr, pc.ids)
        rerank(prows, qvec, dense_scores(dense, pc.ids, qd), DENSE_WEIGHT)
        res["prr"].append(time.perf_counter() - t)
        # Overlap on the lexical ranking (the dense part is the same function of the same ids for both).
        exact_top = set(cands.ids.tolist())
        pruned_top = rerank(prows, qvec).ids[:K]
        overlaps.append(len(exact_top.intersection(pruned_top.tolist())) / max(1, len(exact_top)))

        t = time.perf_counter()
        top_k((csr @ qvec).astype(np.float32, copy=False), K)
        res["csr"].append(time.perf_counter() - t)
        t = time.perf_counter()
        top_k(np.asarray(csc[:, terms] @ w, dtype=np.float32), K)
        res["csc"].append(time.perf_counter() - t)
        t = time.perf_counter()
        top_k(dense @ qd, K)
        res["dense"].append(time.perf_counter() - t)
        del ranked

    ov = np.array(overlaps)
    print(
        f"\n{n:,} images: {csc.nnz / n:.0f} terms/image, {csc.nnz:,} postings; {np.mean(touched) / 1e6:.2f}M "
        f"postings touched per query (mean); build {build_s:.1f}s, warm-up {warm_s:.1f}s; "
        f"index {index.nbytes / 2**20:.0f} MiB"
    )
    load = os.getloadavg()[0]
    print(f"  {'stage':<34} {'p50 ms':>7} {'p95 ms':>7} {'min ms':>7}   (load average {load:.1f})")
    print(f"  {'exact  candidates (top 1000)':<34} {ms(res['cand'])}")
    print(f"  {'exact  re-rank 1000 (lex + dense)':<34} {ms(res['rr'])}")
    tot = [a + b for a, b in zip(res["cand"], res["rr"])]
    print(f"  {'exact  total':<34} {ms(tot)}")
    print(f"  {f'pruned candidates (pool {int(K * prune.pool)})':<34} {ms(res['pcand'])}")
    print(f"  {'pruned re-rank of the pool':<34} {ms(res['prr'])}")
    ptot = [a + b for a, b in zip(res["pcand"], res["prr"])]
    print(f"  {'pruned total':<34} {ms(ptot)}   top-1000 overlap mean {ov.mean():.4f} min {ov.min():.4f}")
    print(f"  {'scipy CSR brute force + top 1000':<34} {ms(res['csr'])}")
    print(f"  {'scipy CSC column gather + top 1000':<34} {ms(res['csc'])}")
    print(f"  {'dense 512-d float32 scan + top 1000':<34} {ms(res['dense'])}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prune-exact", type=int, default=PruneConfig.exact_terms)
    ap.add_argument("--prune-terms", type=int, default=PruneConfig.max_terms)
    ap.add_argument(
        "--prune-cap",
        type=float,
        default=PruneConfig.cap_fraction,
        help="postings kept per term, as a fraction of the images",
    )
    ap.add_argument("--prune-pool", type=float, default=PruneConfig.pool)
    args = ap.parse_args(argv)
    import scipy

    print(
        f"query latency: {QUERY_TERMS}-term queries, top {K}, {args.queries} queries per size; numpy "
        f"{np.__version__}, scipy {scipy.__version__}, "
        f"OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    for n in (int(s) for s in args.sizes.split(",")):
        prune = PruneConfig(
            exact_terms=args.prune_exact,
            max_terms=args.prune_terms,
            cap_fraction=args.prune_cap,
            pool=args.prune_pool,
        )
        run_size(n, args.queries, prune, args.seed)
        gc.collect()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\npeak memory {peak:.1f} GiB")


if __name__ == "__main__":
    main()
