"""How sure a model is of an image's top words, on its own kind of images and on real photos.

For each group of images (a caption folder's images, scikit-image's real photos) it prints, per candidate
statistic, the percentiles over the group's images:

* ``top1``: the strongest word's weight in the sparsified, L2-normalised image vector;
* ``logit``: that word's raw read-out (max over tokens of z_t . Z_img[w], before elu1p and the norm): how
  strongly the image shows its best word, which the norm hides;
* ``active``: how many words pass the 1/sqrt(V) line.

* ``margin``: that read-out minus the image's median read-out over the vocabulary (``LexVLA.word_margin``,
  what explain uses), and ``logit2`` / ``logit3m`` (the 2nd word's read-out, the mean of the top 3).

The first ``--folder`` is the reference (as the held-out images are at the end of training): the other
groups are counted against its margin percentiles. ``--per-image`` also lists each real photo's figures and top words. This is the measurement behind
``lexsearch.explain.weak_words`` (which statistic, and where its line is drawn).

    python bench/weak_words.py --model RUN --folder /tmp/toy/val [--folder /tmp/s2/val] --per-image
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

# scikit-image's sample photos of real scenes (skimage/data; no download). Not the drawings, charts,
# textures or microscope slides.
REAL_PHOTOS = (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "rocket",
    "stereo_motorcycle",
    "hubble_deep_field",
    "coins",
    "moon",
    "retina",
    "brick",
    "grass",
    "gravel",
)


def real_photos():
    import skimage.data
    from PIL import Image

    out = []
    for name in REAL_PHOTOS:
        arr = getattr(skimage.data, name)()
        if isinstance(arr, tuple):  # stereo_motorcycle: (left, right, disparity)
            arr = arr[0]
        out.append((name, Image.fromarray(np.asarray(arr)).convert("RGB")))
    return out


def folder_images(folder: Path, limit: int):
    from lexsearch.data.pairs import load_pairs

    pairs = load_pairs(str(folder))
    keys = pairs.images[:limit]
    return [(k, pairs.load_image(k)) for k in keys]


def figures(encoder, images) -> dict[str, np.ndarray]:
    import torch

    from lexsearch.model.lexvla import codebook_logits

    model = encoder.model
    out = {"top1": [], "logit": [], "logit2": [], "logit3m": [], "margin": [], "active": []}
    vocab = model.vocab_size
    with torch.inference_mode():
        for start in range(0, len(images), 64):
            batch = images[start : start + 64]
            px = torch.from_numpy(np.stack([encoder.preprocess(im) for _, im in batch]))
            s, _ = model.encode_image(px)  # (B, V)
            logits = codebook_logits(model.image_tokens(px), model.z_img).max(dim=1).values  # (B, V)
            best = s.argmax(dim=1)
            out["top1"] += s.max(dim=1).values.tolist()
            out["logit"] += logits.gather(1, best[:, None])[:, 0].tolist()
            out["active"] += (s > 1.0 / np.sqrt(vocab)).sum(dim=1).tolist()
            top = logits.topk(3, dim=1).values
            out["logit2"] += top[:, 1].tolist()
            out["logit3m"] += top.mean(1).tolist()
            out["margin"] += (top[:, 0] - logits.median(dim=1).values).tolist()
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--folder", action="append", default=[], help="A caption folder (its images).")
    ap.add_argument("--limit", type=int, default=500, help="Images per folder.")
    ap.add_argument("--per-image", action="store_true", help="Each real photo's figures and top words.")
    args = ap.parse_args()

    from lexsearch.model import Encoder

    encoder = Encoder.load(args.model, device="cpu")
    groups = [
        (Path(f).name + f" ({Path(f).parent.name})", folder_images(Path(f), args.limit)) for f in args.folder
    ]
    photos = real_photos()
    groups.append(("real photos (scikit-image)", photos))
    qs = (0, 1, 5, 10, 50, 90, 100)
    lines = None
    for name, images in groups:
        f = figures(encoder, images)
        print(f"{name}: {len(images)} images")
        for key, values in f.items():
            pct = "  ".join(f"p{q} {np.percentile(values, q):.3f}" for q in qs)
            print(f"  {key:7s} {pct}")
        if lines is None:  # the first group is the reference, as the held-out images are in training
            lines = {q: float(np.percentile(f["margin"], q)) for q in (0.5, 1, 5)}
            print(
                "  weak-words lines (margin percentiles of this group): "
                + ", ".join(f"p{q:g} {v:.3f}" for q, v in lines.items())
            )
        else:
            below = ", ".join(
                f"{int((f['margin'] < v).sum())}/{len(images)} below p{q:g}" for q, v in lines.items()
            )
            print(f"  margin {below}")
    ref = encoder.config.word_margins
    if ref:
        print(f"the checkpoint's own reference (ModelConfig.word_margins): {ref}")
    if args.per_image:
        f = figures(encoder, photos)
        for k, (name, im) in enumerate(photos):
            words = encoder.decode(encoder.encode_images([im]).sparse[0], top_k=4)
            shown = ", ".join(f"{w} {x:.2f}" for w, x in words)
            print(
                f"  {name:18s} top1 {f['top1'][k]:.3f}  logit {f['logit'][k]:6.2f}  margin {f['margin'][k]:6.2f}  "
                f"active {int(f['active'][k]):3d}  {shown}"
            )


if __name__ == "__main__":
    main()
