"""Where a trained model's retrieval errors on a toy world are: which wrong top-1s a bag-of-words model could
not have avoided, and which it could.

    python bench/toy_errors.py --model RUN_DIR --val W/val

Each wrong top-1 (t2i: the best image of a caption; i2t: the best caption of an image) is sorted by what it
shares with the truth: the same bag of (colour, shape) pairs and the same largest object (no lexical model
tells these apart when the captions name the same objects in the same order), the same bag but another
largest object (the size order read wrong), or another bag (a colour or shape read wrong). Also prints the
ceiling: R@1 of a model that knows each image's ordered object list and ranks ties at random, and the words
that differ most often in wrong-bag i2t errors.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import lexsearch  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a trained checkpoint folder")
    ap.add_argument("--val", required=True, help="a toy-world or shapes2 folder (labels.jsonl)")
    args = ap.parse_args()

    import numpy as np
    import torch

    from lexsearch.data.pairs import load_pairs
    from lexsearch.model.checkpoint import load_checkpoint
    from lexsearch.train.loop import encode_pairs

    model = load_checkpoint(Path(args.model))
    pairs = load_pairs(args.val)
    rows = (json.loads(line) for line in (Path(args.val) / "labels.jsonl").read_text().splitlines())
    labels = {r["image"]: r for r in rows}
    img, txt = encode_pairs(model, pairs, torch.device("cpu"), batch_size=128)  # as validation encodes
    scores = (txt @ img.T).toarray()  # (captions, images)

    def objects(j: int) -> tuple:
        return tuple((s["colour"], s["shape"]) for s in labels[pairs.images[j]]["shapes"])  # largest first

    def kind(truth: int, got: int) -> str:
        a, b = objects(truth), objects(got)
        if set(a) != set(b):
            return "another bag"
        return "same bag, same largest" if a[0] == b[0] else "same bag, another largest"

    truth_of_caption = np.asarray(pairs.caption_image)
    groups = collections.Counter(objects(j) for j in range(len(pairs.images)))
    ceiling = np.mean([1.0 / groups[objects(j)] for j in truth_of_caption])
    print(
        f"{len(pairs.captions)} captions, {len(pairs.images)} images; ordered-bag ceiling R@1 {100 * ceiling:.1f}"
    )
    words = collections.Counter()
    n_img = len(pairs.images)
    # As validation counts R@1: a wrong item scoring at least the best right one is a miss (ties count
    # against the model), and that wrong item is the one sorted.
    t2i = []
    for i, t in enumerate(truth_of_caption):
        row = scores[i].copy()
        right = row[t]
        row[t] = -np.inf
        t2i.append((t, t if right > row.max() else int(row.argmax())))
    i2t = []
    for j in range(n_img):
        col = scores[:, j]
        mine = truth_of_caption == j
        best_wrong = int(np.where(mine, -np.inf, col).argmax())
        i2t.append((j, j if col[mine].max() > col[best_wrong] else int(truth_of_caption[best_wrong])))
    for name, results in (("t2i", t2i), ("i2t", i2t)):
        counts = collections.Counter("right" if t == g else kind(t, g) for t, g in results)
        print(name, "  ".join(f"{k} {100 * v / len(results):.1f}%" for k, v in sorted(counts.items())))
        if name == "i2t":
            for t, g in results:
                if t != g and kind(t, g) == "another bag":
                    have = {w for o in objects(t) for w in o}
                    said = {w for o in objects(g) for w in o}
                    words.update(sorted(have ^ said))
    print("words differing in wrong-bag i2t errors:", ", ".join(f"{w} {n}" for w, n in words.most_common(8)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
