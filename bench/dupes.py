"""Precision and recall of `lexsearch dupes` on a generated folder, and the grouping step's time at 100k images.

    pip install -e '.[test,bench]'           # scikit-image: its bundled photographs join the set
    python bench/dupes.py                     # seed 0 (the set the defaults were tuned on), seeds 1 and 2
    python bench/dupes.py --seeds 2 --scale 100000 --model DIR

The folder (tests/dupefolder.py): toy-world renders, procedural landscapes and scikit-image's photographs;
edited copies of every second original (JPEG quality 15-30, resized to 50-70%, cropped 3-8%, brightness
x0.8/x1.2, colour boost + tint, rotated 2 degrees); look-alikes that must not be grouped (same-caption toy
images with another layout, a corner crop of about half of each photo or landscape, scikit-image's stereo
motorcycle pair). It is indexed with `lexsearch index` and the tiny model (built offline; its image tower is
the shipped pretrained tiny ViT, its dense head as initialised), then `lexsearch.dupes.find_dupes` runs.
A found pair is any two files in one reported group; the true pairs are those inside each original's family.

Scale: synthetic hashes and dense vectors (dim 256, the paper and small presets' dense dim) for N images of
which 10% are edited copies (0-80 of the 256 hash bits flipped, vector + noise); timed: candidates + confirmation +
union-find and the groups: `find_dupes` over an object that hands it these rows instead of a store.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dupefolder import make_dupe_folder  # noqa: E402


def quality(seed: int, tmp: Path, model: str) -> None:
    from lexsearch.collection import open_collection
    from lexsearch.dupes import find_dupes
    from lexsearch.index.phash import hamming, hash_array

    try:
        import skimage  # noqa: F401

        photos = True
    except ImportError:
        photos = False
    d = make_dupe_folder(tmp / f"set{seed}", toys=16, scenes=14, photos=photos, seed=seed)
    col = tmp / f"col{seed}"
    env = dict(os.environ, LEXSEARCH_HOME=str(tmp / "home"), CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "lexsearch", "index", str(d.folder), "--model", model]
    subprocess.run([*cmd, "--collection", str(col), "--quiet"], env=env, check=True)
    with open_collection(col) as c:
        t = time.perf_counter()
        report = find_dupes(c)
        took = time.perf_counter() - t
        ids, vecs, phashes, facts = c.dupe_rows()
    row = {facts[int(i)]["path"]: k for k, i in enumerate(ids)}
    hashes, _ = hash_array(phashes)

    def why(p: list[str]) -> str:
        a, b = row[p[0]], row[p[1]]
        bits = int(hamming(hashes[a : a + 1], hashes[b : b + 1])[0])
        return (
            f"{' + '.join(Path(x).name for x in p)} (hash bits {bits}, dense {float(vecs[a] @ vecs[b]):.3f})"
        )

    found = {
        frozenset(p) for g in report.groups for p in itertools.combinations([im.path for im in g.images], 2)
    }
    true = d.true_pairs()
    hit = found & true
    looks = {frozenset(p) for p in d.lookalikes}
    n_orig = len(set(d.truth.values()))
    print(
        f"seed {seed}: {len(d.truth)} images ({n_orig} originals incl. {len(looks)} look-alikes, "
        f"{len(d.truth) - n_orig} edited copies; scikit-image photos: {'yes' if photos else 'no'}), "
        f"{len(true)} true pairs"
    )
    print(
        f"  groups {len(report.groups)}, pairs found {len(found)}, correct {len(hit)}: "
        f"precision {len(hit) / max(len(found), 1):.3f}, recall {len(hit) / max(len(true), 1):.3f}; "
        f"look-alike pairs grouped {len(found & looks)} of {len(looks)}; find_dupes {took * 1000:.0f} ms"
    )
    for p in sorted(sorted(x) for x in found - true):
        print("  wrong:", why(p))
    for p in sorted(sorted(x) for x in true - found):
        print("  missed:", why(p))


def scale(n: int, dim: int, seed: int = 0) -> None:
    import faiss

    from lexsearch.dupes import (
        DEFAULT_THRESHOLD,
        confirmed_pairs,
        find_dupes,
        union_find_groups,
    )
    from lexsearch.index.phash import HASH_BITS, HASH_BYTES

    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    hashes = rng.integers(0, 256, (n, HASH_BYTES), dtype=np.uint8)
    copies = rng.choice(n, n // 10, replace=False)
    sources = rng.choice(np.setdiff1d(np.arange(n), copies), n // 10)
    vecs[copies] = vecs[sources] + rng.standard_normal((len(copies), dim)).astype(np.float32) * 0.3
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    bits = np.unpackbits(hashes[sources], axis=1)
    for row in range(len(copies)):  # an edit flips up to 80 of the 256 bits
        flip = rng.choice(HASH_BITS, int(rng.integers(0, 81)), replace=False)
        bits[row, flip] ^= 1
    hashes[copies] = np.packbits(bits, axis=1)
    known = np.ones(n, bool)

    class Synthetic:  # what find_dupes reads of a collection, without SQLite
        path = "synthetic"
        meta = {"dense_dim": dim}

        def dupe_rows(self):
            facts = {
                k: {"path": f"{k:06d}", "width": 4000, "height": 3000, "size": 1, "taken": None}
                for k in range(n)
            }
            return np.arange(n), vecs, [bytes(h).hex() for h in hashes], facts

    load = os.getloadavg()
    t = time.perf_counter()
    report = find_dupes(Synthetic())
    t_full = time.perf_counter() - t
    i, j, _, _ = confirmed_pairs(vecs, hashes, known, DEFAULT_THRESHOLD)
    t = time.perf_counter()
    union_find_groups(n, i, j)
    t_uf = time.perf_counter() - t
    family = np.arange(n)
    family[copies] = sources  # an image and its copies share a family
    got = {
        frozenset(int(im.path) for im in p)
        for g in report.groups
        for p in itertools.combinations(g.images, 2)
    }
    members: dict[int, list[int]] = {}
    for x in np.flatnonzero(np.isin(np.arange(n), np.concatenate([copies, sources]))).tolist():
        members.setdefault(int(family[x]), []).append(x)
    planted = {frozenset(p) for m in members.values() for p in itertools.combinations(m, 2)}
    print(
        f"scale: {n:,} images, dense dim {dim}, {len(copies):,} edited copies ({len(planted):,} true pairs); "
        f"find_dupes (hashes parsed, candidates, confirmation, union-find, groups) {t_full:.2f} s, of which "
        f"union-find {t_uf:.3f} s; {len(report.groups):,} groups, recall {len(got & planted) / len(planted):.3f}, "
        f"precision {len(got & planted) / max(len(got), 1):.3f} "
        f"(load average before: {load[0]:.2f}; faiss threads {faiss.omp_get_max_threads()})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="Generated sets (seed 0, 1, ...).")
    ap.add_argument("--scale", type=int, default=100_000, help="Images in the timing run (0: skip).")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--model", help="Model folder (default: build the tiny model offline).")
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory(prefix="lexsearch-dupes-") as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            from conftest import TINY_TEXTS

            from lexsearch.tiny.builder import build_tiny_checkpoint

            model = str(build_tiny_checkpoint(tmp / "model", TINY_TEXTS, seed=0))
        for seed in range(args.seeds):
            quality(seed, tmp, model)
    if args.scale:
        scale(args.scale, args.dim)


if __name__ == "__main__":
    main()
