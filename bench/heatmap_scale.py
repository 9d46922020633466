"""Where patch scores sit on a model: the figures behind lexsearch.explain.HEAT_TOP.

For N indexed images of a collection: the strongest patch score of each image's top word (a clear match),
of its 5th word, and of a word the image does not hold (absent), against the present/absent line 1/sqrt(V).

    python bench/heatmap_scale.py --collection demo --images 200
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collection", default="demo")
    ap.add_argument("--images", type=int, default=200)
    args = ap.parse_args()

    from lexsearch.index.store import Collection
    from lexsearch.model.images import open_image
    from lexsearch.search import load_encoder

    with Collection.open(args.collection, readonly=True) as col:
        encoder = load_encoder(col, device="cpu")
        ids = sorted(col.image_paths(range(1, col.max_image_id + 1)))[: args.images]
        paths = col.image_paths(ids)
        rows = col.forward(ids)
        rng = np.random.default_rng(0)
        top1, top5, absent = [], [], []
        for i in ids:
            terms, weights = rows[i]
            order = np.argsort(-weights)
            patches = encoder.encode_patches(open_image(paths[i]))
            top1.append(patches[:, terms[order[0]]].max())
            if terms.size >= 5:
                top5.append(patches[:, terms[order[4]]].max())
            missing = np.setdiff1d(np.arange(patches.shape[1]), terms)
            absent.append(patches[:, rng.choice(missing)].max())
    floor = 1 / np.sqrt(encoder.vocab_size)
    print(f"V = {encoder.vocab_size}, present/absent line 1/sqrt(V) = {floor:.3f}, {len(ids)} images")
    for name, values in (("top word", top1), ("5th word", top5), ("a word not in the image", absent)):
        v = np.asarray(values)
        p = np.percentile(v, [10, 25, 50, 75, 90])
        print(
            f"strongest patch, {name:24s} p10 {p[0]:.3f}  p25 {p[1]:.3f}  p50 {p[2]:.3f}  p75 {p[3]:.3f}  p90 {p[4]:.3f}"
        )


if __name__ == "__main__":
    main()
