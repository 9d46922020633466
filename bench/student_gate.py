"""The student's quality check against what users see: students of one model stopped after N steps, each
with its held-out agreement figures (what the check measures) and the answers of real queries (what it must
predict), beside the LM's answers.

    python bench/student_gate.py --model MODEL --world WORLD --collection demo [--steps 5 20 50 100 200 400]

MODEL: a toy-world model (e.g. the demo's, LEXSEARCH_HOME/models/demo-*); WORLD: its toy world (captions
and labels); COLLECTION: the world's images indexed with MODEL (``lexsearch demo`` makes ``demo``). The
teacher labels the texts once; every student is trained from scratch on the same texts with a step budget
(``DistillConfig.max_steps``) and written into MODEL (the last one stays there: rerun ``lexsearch distill``
or the demo afterwards).

A query's answer is right when the image holds what it asks for, by the world's labels: "COLOUR SHAPE" (all
30 pairs, and the demo's queries) an object of that colour and shape, "a and b" both, "SHAPE -COLOUR" such
a shape and no object of that colour, "+COLOUR SHAPE" that object, "zebra" no answer at all. Words: the two
strongest words a result shows for a "COLOUR SHAPE" query are that colour and that shape. Top 3 of each.
Prints one row per student and one for the LM, with the load average.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

DEMO = ("a red circle", "blue square and a yellow star", "triangle -green", "+purple cross", "zebra")


def wanted(query: str) -> tuple[list[tuple[str, str]], str | None] | None:
    """((colour, shape) objects an answer must hold, colour it must not hold), or None: no answer wanted."""
    if query == "zebra":
        return None
    if query.startswith("triangle -"):
        return [("*", "triangle")], query.split("-", 1)[1]
    objects = []
    for part in query.lstrip("+").replace("a ", "").split(" and "):
        colour, shape = part.split()
        objects.append((colour, shape))
    return objects, None


def right(shapes, objects, banned) -> bool:
    have = {(s.colour, s.shape) for s in shapes}
    ok = all(
        any(sh == shape and (colour == "*" or c == colour) for c, sh in have) for colour, shape in objects
    )
    return ok and (banned is None or all(c != banned for c, _ in have))


def judge(col, encoder, labels, world: Path, queries) -> tuple[int, int, int, int, list[str]]:
    """(right answers, answers, right word pairs, word pairs, wrong queries) of ``queries``, top 3 each."""
    from lexsearch.search import search

    good = total = words_good = words_total = 0
    wrong = []
    for query in queries:
        results = search(col, encoder, query, top=3)
        want = wanted(query)
        if want is None:
            total += 1
            good += not results
            if results:
                wrong.append(query)
            continue
        objects, banned = want
        bad = False
        for r in results:
            shapes = labels[Path(r.path).resolve().relative_to(world).as_posix()].shapes
            ok = right(shapes, objects, banned)
            good += ok
            bad |= not ok
            total += 1
            if len(objects) == 1 and objects[0][0] != "*" and not query.startswith("+"):
                words_total += 1
                words_good += {w for w, _ in r.words[:2]} == set(objects[0])
        if len(results) < 3:  # fewer answers than asked for, though the world has plenty: wrong ones
            total += 3 - len(results)
            bad = True
        if bad:
            wrong.append(query)
    return good, total, words_good, words_total, wrong


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--world", required=True)
    ap.add_argument("--collection", default="demo")
    ap.add_argument("--steps", type=int, nargs="+", default=[5, 20, 50, 100, 200, 400])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from lexsearch.data.toyworld import COLOUR_WORDS, SHAPE_WORDS, read_labels
    from lexsearch.index.store import Collection
    from lexsearch.model.lazy import LazyEncoder
    from lexsearch.model.student import GATE, passes
    from lexsearch.train import distill as d

    world = Path(args.world).resolve()
    labels = read_labels(world)
    queries = list(DEMO) + ["green triangle"] + [f"{c} {s}" for c in COLOUR_WORDS for s in SHAPE_WORDS]
    captions = d.read_captions(world)
    cache: dict = {}
    label_s = [0.0]
    teacher = d.teacher_hidden

    def cached(model, texts, device, batch_size=128, progress=None, deadline=None):
        key = tuple(texts)
        if key not in cache:
            t = time.monotonic()
            cache[key] = teacher(model, texts, device, batch_size)
            label_s[0] = time.monotonic() - t
        return cache[key]

    d.teacher_hidden = cached
    print(f"load average at start {os.getloadavg()}; torch threads {torch.get_num_threads()}; gate {GATE}")
    print("steps  train_s  cosine  words  top1   overlap  pass | answers right  words right  wrong queries")
    with Collection.open(args.collection, readonly=True) as col:
        for steps in args.steps:
            cfg = d.DistillConfig(minutes=600, max_minutes=600, max_steps=steps, device="cpu", seed=args.seed)
            t = time.monotonic()
            res = d.distill(args.model, captions, cfg)
            took = time.monotonic() - t - (label_s[0] if steps == args.steps[0] else 0.0)
            f = res.figures
            enc = LazyEncoder(args.model, device="cpu", text_encoder="student")
            g, n, wg, wn, wrong = judge(col, enc, labels, world, queries)
            print(
                f"{res.steps:5d}  {took:7.1f}  {f.get('cosine', float('nan')):.3f}   {f.get('words', 0):.3f}  "
                f"{f.get('top1', float('nan')):.3f}  {f.get('overlap', float('nan')):.3f}    "
                f"{'yes' if passes(f) else 'no ':3s} | {g:3d}/{n:<3d}        {wg:3d}/{wn:<3d}      "
                f"{', '.join(wrong) or '-'}",
                flush=True,
            )
        enc = LazyEncoder(args.model, device="cpu", text_encoder="lm")
        g, n, wg, wn, wrong = judge(col, enc, labels, world, queries)
        print(
            f"   LM                                          | {g:3d}/{n:<3d}        {wg:3d}/{wn:<3d}      {', '.join(wrong) or '-'}"
        )
    print(
        f"teacher labelling of {len(next(iter(cache)))} texts: {label_s[0]:.1f} s; load average {os.getloadavg()}"
    )


if __name__ == "__main__":
    main()
