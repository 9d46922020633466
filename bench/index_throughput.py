"""Indexing throughput next to the model's own forward rate, re-index time, and bytes on disk per image.

    python bench/index_throughput.py                   # the tiny model, built offline (~5 min on 2 cores)
    python bench/index_throughput.py --model DIR --device cuda --images 2048 --size 1024x768

Printed, in one run on the same images (JPEGs generated with --size, so decoding costs what a photo costs):
- model forward:  images/s of ``encoder.encode_pixels`` on ready batches (decode + preprocess excluded)
- full index:     images/s of ``build_index`` on a fresh collection (scan, hash, decode in threads, the
                  model, SQLite commits, FAISS save), and its ratio to the forward rate (aim >= 0.9)
- re-index:       seconds to re-index an unchanged folder, measured on --unchanged-files real files that
                  were indexed first (aim: 10,000 files in under 2 s)
- disk:           bytes per image of index.db (+ WAL) + posting files + FAISS files
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lexsearch.index import Collection, IndexOptions, build_index
from lexsearch.model.images import load_image

WARMUP_BATCHES = 8
TINY_TEXTS = [
    f"a {size} {colour} {shape}"
    for size in ("small", "large")
    for colour in ("red", "green", "blue", "yellow", "purple")
    for shape in ("circle", "square", "triangle", "star")
]


def make_photos(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> None:
    """Smooth random images saved as JPEG: realistic decode cost, distinct content per file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(n):
        small = rng.integers(0, 256, (h // 32 + 1, w // 32 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        img.save(folder / f"photo_{i:06d}.jpg", quality=90)


def make_tiny_files(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"t_{i:06d}.png")


def forward_rate(enc, pixels: np.ndarray, bs: int) -> float:
    t = time.perf_counter()
    for i in range(0, len(pixels), bs):
        enc.encode_pixels(pixels[i : i + bs])
    return len(pixels) / (time.perf_counter() - t)


def disk_bytes(col_path: Path) -> int:
    return sum(
        p.stat().st_size
        for p in col_path.iterdir()
        if p.name in ("index.db", "index.db-wal") or p.suffix in (".lxp", ".faiss")
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint folder (default: build the tiny model in a temp folder)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--images", type=int, default=256, help="photos for the forward / index rates")
    ap.add_argument("--size", default="1024x768", help="photo size WxH")
    ap.add_argument("--unchanged-files", type=int, default=10_000, help="files for the re-index figure")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args(argv)
    w, h = (int(x) for x in args.size.lower().split("x"))

    from lexsearch.model import Encoder
    from lexsearch.tiny.builder import build_tiny_checkpoint

    with tempfile.TemporaryDirectory(prefix="lexsearch-bench-") as tmp_s:
        tmp = Path(tmp_s)
        os.environ["LEXSEARCH_HOME"] = str(tmp / "home")
        model_dir = args.model or str(build_tiny_checkpoint(tmp / "tiny", TINY_TEXTS, seed=0))
        enc = Encoder.load(model_dir, device=args.device)
        print(
            f"model {model_dir} on {enc.device}: image {enc.image_size}px, V={enc.vocab_size}, "
            f"dense {enc.dense_dim}; {os.cpu_count()} CPU cores",
            file=sys.stderr,
        )

        photos = tmp / "photos"
        make_photos(photos, args.images, (w, h))
        files = sorted(photos.iterdir())
        pixels = np.stack(
            [
                enc.preprocess(load_image(str(p), max_pixels=10**9, draft_size=enc.image_size)[0])
                for p in files
            ]
        )
        bs = args.batch_size
        # Warm-up: the first calls of a CPU torch model are several times slower (allocator, oneDNN kernel
        # selection); without this the forward rate is understated and the ratio overstated.
        for _ in range(WARMUP_BATCHES):
            enc.encode_pixels(pixels[:bs])
        forward_before = forward_rate(enc, pixels, bs)

        # Time the model inside the index run too: its share of the run is the same ratio, measured over
        # the same seconds, so it holds even on a machine whose load changes between the two measurements.
        model_s = [0.0]
        encode = enc.encode_pixels

        def timed_encode(batch):
            t0 = time.perf_counter()
            out = encode(batch)
            model_s[0] += time.perf_counter() - t0
            return out

        enc.encode_pixels = timed_encode
        opts = IndexOptions(batch_size=bs, workers=args.workers)
        with Collection.open(tmp / "col", readonly=False) as col:
            t = time.perf_counter()
            summary = build_index([photos], enc, col, opts)
            index_s = time.perf_counter() - t
            assert summary.indexed == len(files), summary.line()
        enc.encode_pixels = encode
        index_rate = len(files) / index_s
        model_share = model_s[0] / index_s
        forward = (forward_before + forward_rate(enc, pixels, bs)) / 2  # bracket the index run
        per_image = disk_bytes(tmp / "col") / len(files)

        n = args.unchanged_files
        many = tmp / "many"
        make_tiny_files(many, n)
        with Collection.open(tmp / "col-many", readonly=False) as col:
            t = time.perf_counter()
            build_index([many], enc, col, opts)
            fill_s = time.perf_counter() - t
        times = []
        for _ in range(3):  # the folder is in the page cache after the first pass, as on a real re-run
            with Collection.open(tmp / "col-many", readonly=False) as col:
                t = time.perf_counter()
                summary = build_index([many], enc, col, opts)
                times.append(time.perf_counter() - t)
                assert summary.unchanged == n, summary.line()
        per_image_many = disk_bytes(tmp / "col-many") / n

    print(f"images                {len(files)} JPEG {w}x{h}, batch {bs}")
    print(f"model forward         {forward:8.1f} images/s (mean of before/after the index run)")
    print(f"full index            {index_rate:8.1f} images/s   ({index_s:.1f} s)")
    print(f"index / forward       {index_rate / forward:8.2f}")
    print(f"model share of run    {model_share:8.2f}   (time in encode_pixels / index time, same seconds)")
    print(f"first index of {n} small files: {fill_s:.1f} s ({n / fill_s:.0f} files/s)")
    print(
        f"re-index unchanged    {min(times):8.2f} s for {n} files (best of 3; first {times[0]:.2f} s)"
        f" -> {min(times) * 10_000 / n:.2f} s per 10,000"
    )
    print(
        f"disk per image        {per_image:8.0f} bytes ({len(files)} photos), "
        f"{per_image_many:.0f} bytes ({n} files)"
    )


if __name__ == "__main__":
    main()
