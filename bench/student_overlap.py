"""Top-10 overlap of ``lexsearch query`` results through the student vs through the LM, on a collection.

    lexsearch index /tmp/w10/val/images --model /tmp/w10/model --collection w10-val
    python bench/student_overlap.py --collection w10-val --queries 50

Queries [choice]: half from the held-out captions of ``--captions`` (the toy world's phrasing), half from a
rephrased set (``bench/toy_rephrase.py``) and short "colour shape" queries, drawn with a fixed seed. Each runs
through ``lexsearch.search.search`` exactly as ``lexsearch query`` does (cache off, so each path encodes),
once with ``text_encoder="student"`` and once with ``"lm"``. Prints the mean and the minimum overlap
|top10(student) & top10(lm)| / |top10(lm)|, and how often both paths return the same images in the same order.

Ties [choice]: the strict figure counts only the LM's own top 10. Where the LM scores several images exactly
alike at rank 10 (the same float32 score: e.g. images with identical vectors), which of them it lists is
arbitrary, so a second figure also counts a student result whose LM score equals the LM's 10th score. Both
are printed; the strict one is the one reported against the target.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "star", "cross"]


def queries(captions: list[Path], n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pools = [
        [
            json.loads(line)["caption"]
            for line in (p / "captions.jsonl").read_text().splitlines()
            if line.strip()
        ]
        for p in captions
    ]
    short = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    out: list[str] = []
    per = n // (len(pools) + 1)
    for pool in pools:
        out.extend(rng.sample(pool, per))
    out.extend(rng.sample(short, n - len(out)))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collection", required=True)
    ap.add_argument("--captions", nargs="+", default=["/tmp/w10/val", "/tmp/w10/val-rephrased"])
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from lexsearch.index.store import Collection
    from lexsearch.search import load_encoder, search

    texts = queries([Path(p) for p in args.captions], args.queries, args.seed)
    overlaps, same = [], 0
    with Collection.open(args.collection, readonly=True) as col:
        student = load_encoder(col, device="cpu", text_encoder="student")
        lm = load_encoder(col, device="cpu", text_encoder="lm")
        tied = []
        for text in texts:
            a = [r.image_id for r in search(col, student, text, top=args.top, use_cache=False)]
            # The LM's ranking further down, for the scores of student results outside the LM's top 10.
            b = [r.image_id for r in search(col, lm, text, top=args.top, use_cache=False)]
            deep = search(col, lm, text, top=args.top * 20, use_cache=False)
            if not b:
                overlaps.append(1.0 if not a else 0.0)
                tied.append(overlaps[-1])
            else:
                overlaps.append(len(set(a) & set(b)) / len(b))
                lm_score = {r.image_id: r.score for r in deep}
                last = lm_score.get(b[-1])
                ties = sum(1 for i in a if i not in b and lm_score.get(i) == last)
                tied.append(min(1.0, (len(set(a) & set(b)) + ties) / len(b)))
            same += a == b
    ov, ovt = np.array(overlaps), np.array(tied)
    print(
        f"{len(texts)} queries on {args.collection}: top-{args.top} overlap mean {ov.mean():.3f}, "
        f"min {ov.min():.2f}, >= 0.9 for {np.mean(ov >= 0.9):.0%}; identical lists {same}/{len(texts)}; "
        f"counting exact LM ties at rank {args.top}: mean {ovt.mean():.3f}"
    )
    worst = np.argsort(ov)[:3]
    for i in worst:
        print(f"  {ov[i]:.2f}  {texts[i]!r}")


if __name__ == "__main__":
    main()
