"""Top-1 colour+shape accuracy of queries in words a toy world's captions never use, for models side by side.

    python bench/synonym_queries.py --world /tmp/toy/val --model tiny=/tmp/runs/tiny --model mini=/tmp/runs/mini

For each query of ``bench/data/synonym_queries.json`` (English synonyms such as "crimson circle", "red box";
French, Spanish and German translations; >= 40 each) the model ranks the world's images; a hit is a top-1
image that holds a shape of the query's colour and shape. Also printed: the same pairs in the captions' own
words ("red circle"), and chance (the mean share of images holding the pair). Figures are printed, never
asserted.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data" / "synonym_queries.json"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", required=True, help="a toy world folder (labels.jsonl, images/)")
    ap.add_argument("--model", action="append", required=True, help="NAME=MODEL_DIR, repeatable")
    ap.add_argument("--queries", default=str(DATA))
    args = ap.parse_args(argv)

    from lexsearch.model.encoder import Encoder

    world = Path(args.world)
    labels = [json.loads(ln) for ln in (world / "labels.jsonl").read_text().splitlines() if ln.strip()]
    images = [str(world / lab["image"]) for lab in labels]
    pairs = [{(s["colour"], s["shape"]) for s in lab["shapes"]} for lab in labels]
    data = json.loads(Path(args.queries).read_text())
    groups = {k: v for k, v in data.items() if not k.startswith("_")}
    plain = sorted({(c, s) for rows in groups.values() for _, c, s in rows})
    groups = {"captions' own words": [[f"{c} {s}", c, s] for c, s in plain], **groups}

    print(
        f"world {world}: {len(images)} images; queries: "
        + ", ".join(f"{k} {len(v)}" for k, v in groups.items())
    )
    chance = {
        g: np.mean([np.mean([(c, s) in p for p in pairs]) for _, c, s in rows]) for g, rows in groups.items()
    }
    table = {}
    for spec in args.model:
        name, _, model_dir = spec.partition("=")
        t0 = time.perf_counter()
        enc = Encoder.load(model_dir, device="cpu")
        img = enc.encode_images(images, batch_size=64).sparse
        table[name] = {}
        for group, rows in groups.items():
            txt = enc.encode_texts([q for q, _, _ in rows]).sparse
            top = np.asarray((txt @ img.T).argmax(axis=1)).ravel()
            hits = [(c, s) in pairs[i] for i, (_, c, s) in zip(top, rows)]
            table[name][group] = 100.0 * np.mean(hits)
        print(f"{name}: {model_dir} ({time.perf_counter() - t0:.0f} s)")
    names = list(table)
    print(f"\n{'queries':<22}{'n':>4}" + "".join(f"{n:>10}" for n in names) + f"{'chance':>10}")
    for group, rows in groups.items():
        cells = "".join(f"{table[n][group]:>9.1f}%" for n in names)
        print(f"{group:<22}{len(rows):>4}{cells}{100 * chance[group]:>9.1f}%")


if __name__ == "__main__":
    main()
