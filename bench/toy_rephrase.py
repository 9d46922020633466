"""A second caption set for a toy world, phrased unlike the toy world's own templates.

    python bench/toy_rephrase.py /tmp/w10/val /tmp/w10/val-rephrased

Reads the world's ``labels.jsonl`` (the colour and shape of every shape in an image) and writes
``captions.jsonl`` in OUT (with ``images`` linked to the world's) from templates the toy world never uses:
other joining words ("with", commas, "next to"), noun-first phrasing ("a circle in red"), capitals, upper case,
trailing punctuation and shuffled shape order. Used to check that the student query encoder follows the LM on
text it was not distilled on (``lexsearch eval retrieval --data OUT --text-encoder student|lm``).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

TEMPLATES = (
    lambda p, r: " with ".join(f"{c} {s}" for c, s in p),
    lambda p, r: ", ".join(f"{s} in {c}" for c, s in p),
    lambda p, r: " next to ".join(f"the {c} {s}" for c, s in p) + ".",
    lambda p, r: "; ".join(f"{c.capitalize()} {s.capitalize()}" for c, s in p),
    lambda p, r: " AND ".join(f"{c.upper()} {s.upper()}" for c, s in p),
    lambda p, r: "shapes: " + ", ".join(f"{c} {s}" for c, s in p),
    lambda p, r: "A " + " plus ".join(f"{c} {s}" for c, s in p) + "!",
)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("world")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    world, out = Path(args.world).resolve(), Path(args.out)
    rng = random.Random(args.seed)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "images").exists():
        (out / "images").symlink_to(world / "images")
    rows = []
    for line in (world / "labels.jsonl").read_text().splitlines():
        label = json.loads(line)
        shapes = [(s["colour"], s["shape"]) for s in label["shapes"]]
        rng.shuffle(shapes)
        caption = TEMPLATES[rng.randrange(len(TEMPLATES))](shapes, rng)
        rows.append(json.dumps({"image": label["image"], "caption": caption}))
    (out / "captions.jsonl").write_text("\n".join(rows) + "\n")
    print(f"{len(rows)} captions written to {out / 'captions.jsonl'}")


if __name__ == "__main__":
    main()
