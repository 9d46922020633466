"""Re-index of an unchanged collection: in-process, and as the `lexsearch index` command a cron job runs.

    python bench/reindex_unchanged.py                        # 10,000 files in 100 folders, the tiny model
    python bench/reindex_unchanged.py --files 100000 --folders 1000 --model DIR

The collection is built cheaply: the files are small PNGs that exist on disk (the scan stats them), and
their rows go in through the store's writer with synthetic vectors (no model run), as an index run would
write them. One run then records the folder digests (it reads every row once). Printed:

- the first run:    reads every stored row once and records each folder's digest
- in-process:       ``Collection.open`` + ``build_index`` on the unchanged folders (best and median of --runs)
- CLI process:      ``lexsearch index DIRS --collection C --quiet`` as a fresh process (Python start-up and
                    imports included), best and median; and which heavy modules that process imported
                    (the networks must not load when nothing changed)
- the floor:        ``lexsearch --help`` as a fresh process, for the start-up alone

Aim: 10,000 unchanged files in under 2 s as a CLI process.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

# Modules whose import in an unchanged run would mean the networks (or more than a scan) were loaded.
HEAVY = ("torch", "transformers", "tokenizers", "peft", "faiss", "watchdog", "PIL")


def make_files(root: Path, n: int, folders: int) -> list[Path]:
    """``n`` distinct 8x8 PNGs spread over ``folders`` subfolders (a photo library's year/event folders)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        folder = root / f"event_{i % folders:04d}"
        if i < folders:
            folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
        path = folder / f"img_{i:06d}.png"
        path.write_bytes(buf.getvalue())
        paths.append(path)
    return paths


def fill(col, encoder, model_dir: str, paths: list[Path], terms_per_image: int = 60) -> None:
    """The rows an index run would write, with random sparse and dense vectors instead of the model's."""
    from lexsearch.index import model_meta
    from lexsearch.index.photometa import PHOTO_FIELDS, mtime_taken
    from lexsearch.index.scan import content_hash
    from lexsearch.index.writer import Changes, NewImage

    col.bind_model(model_meta(encoder, model_dir), "lexsearch index ... --rebuild")
    rng = np.random.default_rng(1)
    vocab, dim = int(encoder.vocab_size), int(encoder.dense_dim or 0)
    k = min(terms_per_image, vocab)
    for start in range(0, len(paths), 1024):
        batch = []
        for p in paths[start : start + 1024]:
            st = p.stat()
            terms = np.sort(rng.choice(vocab, k, replace=False)).astype(np.uint32)
            dense = None
            if dim:
                dense = rng.standard_normal(dim).astype(np.float32)
                dense /= np.linalg.norm(dense)
            photo = dict.fromkeys(PHOTO_FIELDS) | mtime_taken(st.st_mtime_ns) | {"gps": 0}
            batch.append(
                NewImage(
                    str(p),
                    st.st_size,
                    st.st_mtime_ns,
                    content_hash(p, st.st_size),
                    8,
                    8,
                    None,
                    photo=photo,
                    terms=terms,
                    weights=rng.random(k).astype(np.float32) + 0.01,
                    dense=dense,
                )
            )
        col.apply(Changes(insert=batch))
    col.save_dense()


def cli_run(args: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    return time.perf_counter() - t, proc


def imported(stderr: str) -> list[str]:
    """The top-level packages named in a ``-X importtime`` listing."""
    names = set()
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+\d+ \|(\s+)(\S+)", line)
        if m:
            names.add(m.group(2).split(".")[0])
    return sorted(names)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint folder (default: build the tiny model in a temp folder)")
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--folders", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="lexsearch-bench-") as tmp_s:
        tmp = Path(tmp_s)
        env = dict(os.environ, LEXSEARCH_HOME=str(tmp / "home"))
        os.environ["LEXSEARCH_HOME"] = env["LEXSEARCH_HOME"]
        if args.model:
            model_dir = args.model
        else:
            from lexsearch.tiny.builder import build_tiny_checkpoint

            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from conftest import TINY_TEXTS

            model_dir = str(build_tiny_checkpoint(tmp / "tiny", TINY_TEXTS, seed=0))

        from lexsearch.index import Collection, build_index
        from lexsearch.model.lazy import LazyEncoder

        photos, col_path = tmp / "photos", tmp / "col"
        t = time.perf_counter()
        paths = make_files(photos, args.files, args.folders)
        encoder = LazyEncoder(model_dir, device="cpu", text_encoder="lm")
        with Collection.open(col_path, readonly=False) as col:
            fill(col, encoder, model_dir, paths)
        setup_s = time.perf_counter() - t

        with Collection.open(col_path, readonly=False) as col:
            t = time.perf_counter()
            first = build_index([photos], encoder, col, model_path=model_dir)
            first_s = time.perf_counter() - t
        assert first.unchanged == args.files and first.indexed == 0, first.line()

        inproc = []
        for _ in range(args.runs):
            t = time.perf_counter()
            with Collection.open(col_path, readonly=False) as col:
                s = build_index([photos], encoder, col, model_path=model_dir)
            inproc.append(time.perf_counter() - t)
            assert s.unchanged == args.files and s.indexed == 0, s.line()
        assert not encoder.loaded

        exe = str(Path(sys.executable).with_name("lexsearch"))
        index_cmd = [exe, "index", str(photos), "--collection", str(col_path), "--quiet"]
        cli = []
        for _ in range(args.runs):
            seconds, proc = cli_run(index_cmd, env)
            assert proc.returncode == 0 and proc.stdout == "", (proc.returncode, proc.stdout, proc.stderr)
            cli.append(seconds)
        _, proc = cli_run(index_cmd, dict(env, PYTHONPROFILEIMPORTTIME="1"))
        heavy = [m for m in imported(proc.stderr) if m in HEAVY]
        floor = min(cli_run([exe, "--help"], env)[0] for _ in range(3))

    load = os.getloadavg()
    print(f"files                 {args.files} in {args.folders} folders (built in {setup_s:.1f} s)")
    print(f"first run             {first_s:6.2f} s   (reads every row once, records the folder digests)")
    print(
        f"in-process unchanged  {min(inproc):6.2f} s best, {statistics.median(inproc):.2f} s median of {args.runs}"
    )
    print(
        f"CLI unchanged         {min(cli):6.2f} s best, {statistics.median(cli):.2f} s median of {args.runs}"
    )
    print(f"  imported            {', '.join(heavy) or 'none'} of {', '.join(HEAVY)}")
    print(f"lexsearch --help      {floor:6.2f} s   (start-up alone, best of 3)")
    print(f"load                  {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
