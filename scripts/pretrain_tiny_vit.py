"""Pretrain the tiny preset's ViT once on a generated corpus and save it as the shipped asset.

    python scripts/pretrain_tiny_vit.py [--out DIR]          # the shipped asset's recipe (defaults)
    python scripts/pretrain_tiny_vit.py --corpus toy --steps 3500 --n-train 20000 --n-eval 1000

The corpus is rendered in memory with its own fixed seed (CorpusSpec), never from a user's data. ``--corpus
contours`` (the default, :mod:`lexsearch.tiny.contours`) is label-free: unnamed objects from the broad
corpus's parametric shape families (``--family-share``) and random outlines, and per patch the targets its
own object gives: its silhouette (``--silhouette-side``), shape descriptors, the k-means cluster of both
(``--clusters``) and its colour bin. ``--corpus toy`` is the earlier recipe: the toy world's generator and
its shape/colour labels. Training is :func:`lexsearch.tiny.vision.pretrain_vision`; the held-out part of the
corpus gives the recorded figures.
Writes ``model.safetensors`` (float16) + ``config.json`` + ``pretrain_record.json`` into ``--out``
(default: lexsearch/tiny/assets/tiny_vit).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import lexsearch  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)


def corpus_record(args, spec) -> dict:
    """What the record says of the corpus the ViT was trained on."""
    record = {
        "seed": args.corpus_seed,
        "n_train": args.n_train,
        "eval_images": [args.n_train, args.n_train + args.n_eval],
    }
    if args.corpus == "contours":
        return record | {
            "generator": "lexsearch.tiny.contours.contour_targets (unnamed objects, no labels)",
            "classes": args.classes,
            "sizes": args.sizes,
            "max_objects": args.max_objects,
            "geometry_weight": args.geometry_weight,
            "shape_weight": args.shape_weight,
            "silhouette_side": args.silhouette_side,
            "family_share": args.family_share,
            "clusters": args.clusters,
        }
    return record | {
        "generator": "lexsearch.data.toyworld.render_scene (default ToyWorldConfig)",
        "canonical_binding": spec.canonical_binding,
    }


def main() -> int:
    from lexsearch.tiny.vit_asset import ASSET_DIR, CorpusSpec

    spec = CorpusSpec()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12000)
    ap.add_argument("--n-train", type=int, default=spec.n_train)
    ap.add_argument("--n-eval", type=int, default=spec.n_eval)
    ap.add_argument("--corpus-seed", type=int, default=spec.seed)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0, help="initialisation and batch order")
    ap.add_argument("--vision", default="{}", help="TINY_VISION overrides (JSON), for experiments")
    ap.add_argument(
        "--corpus",
        choices=["contours", "toy"],
        default="contours",
        help="contours: label-free targets (lexsearch/tiny/contours.py); toy: the toy world's labels",
    )
    ap.add_argument("--classes", type=int, default=512, help="outline classes of the contours corpus")
    ap.add_argument("--sizes", default="0.08,0.42", help="contours: objects' half extent, shares of the side")
    ap.add_argument("--max-objects", type=int, default=4, help="contours: objects per image, at most")
    ap.add_argument(
        "--geometry-weight", type=float, default=2.0, help="contours: weight of the silhouette + descriptors"
    )
    ap.add_argument("--shape-weight", type=float, default=1.0, help="weight of the per-patch class loss")
    ap.add_argument(
        "--silhouette-side",
        type=int,
        default=8,
        help="contours: each patch also regresses its object's silhouette at this side (0 = off)",
    )
    ap.add_argument(
        "--family-share",
        type=float,
        default=1.0,
        help="contours: share of objects drawn from the broad corpus's parametric families, unnamed",
    )
    ap.add_argument(
        "--clusters",
        type=int,
        default=128,
        help="contours: per-patch classes are k-means clusters of the objects' geometry (0 = the outline ids)",
    )
    ap.add_argument(
        "--init",
        default=None,
        help="start from this ViT (a directory holding model.safetensors + config.json) instead of random "
        "weights; the heads start afresh",
    )
    ap.add_argument("--out", default=str(ASSET_DIR))
    ap.add_argument("--print-every", type=int, default=250)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch
    from transformers import Dinov2Config, Dinov2Model

    from lexsearch.model.presets import preset_config
    from lexsearch.tiny.config import PretrainConfig
    from lexsearch.tiny.vision import pretrain_vision
    from lexsearch.tiny.vit_asset import (
        RECORD_FILE,
        asset_fingerprint,
        corpus_targets,
        load_shipped_vit,
        read_record,
    )

    config = preset_config("tiny")
    config.vision_config = dict(config.vision_config, **json.loads(args.vision))
    config.image_size = int(config.vision_config["image_size"])  # pretrained at its own size, used at any
    patch = int(config.vision_config["patch_size"])
    t0 = time.time()
    if args.corpus == "contours":
        from lexsearch.tiny.contours import contour_targets

        def targets(indices):
            lo, hi = (float(x) for x in args.sizes.split(","))
            return contour_targets(
                indices,
                args.corpus_seed,
                args.classes,
                config,
                patch,
                sizes=(lo, hi),
                max_objects=args.max_objects,
                silhouette_side=args.silhouette_side,
                family_share=args.family_share,
            )
    else:

        def targets(indices):
            return corpus_targets(indices, args.corpus_seed, config, patch)

    train_t = targets(range(args.n_train))
    eval_t = targets(range(args.n_train, args.n_train + args.n_eval))
    if args.corpus == "contours" and args.clusters:
        from lexsearch.tiny.contours import cluster_targets

        cluster_targets(train_t, [eval_t], k=args.clusters, seed=args.seed)
    t_render = time.time() - t0
    print(f"rendered {args.n_train} + {args.n_eval} corpus images in {t_render:.0f} s", flush=True)

    torch.manual_seed(args.seed)
    vision = Dinov2Model(Dinov2Config(**config.vision_config))
    if args.init:  # loading into the configured model fails loudly on a ViT of another shape
        vision.load_state_dict(load_shipped_vit(Path(args.init)).state_dict())
    cfg = PretrainConfig(seed=args.seed, vit_batch_size=args.batch_size, vit_lr=args.lr)
    window: list[dict] = []
    t1 = time.time()

    def progress(stage: str, step: int, total: int, metrics: dict) -> None:
        window.append(metrics)
        if step % args.print_every == 0 or step == total:
            mean = {k: sum(m[k] for m in window) / len(window) for k in window[0]}
            rate = step / (time.time() - t1)
            print(
                f"step {step}/{total}  loss {mean['loss']:.3f}  shape {mean['shape_acc']:.3f}  "
                f"colour {mean['colour_acc']:.3f}  "
                + (f"geometry mse {mean['geometry_mse']:.3f}  " if "geometry_mse" in mean else "")
                + f"({rate:.1f} steps/s)",
                flush=True,
            )
            window.clear()

    torch.manual_seed(args.seed + 2)
    report = pretrain_vision(
        vision,
        train_t,
        cfg,
        progress,
        eval_targets=eval_t,
        steps=args.steps,
        geometry_weight=args.geometry_weight,
        shape_weight=args.shape_weight,
    )
    minutes = (time.time() - t1) / 60
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # float16 halves the asset; the loader casts back to float32 (the accuracies below are of the fp32 model).
    vision.half().save_pretrained(out)
    record = {
        "what": "tiny preset ViT (DINOv2 architecture) pretrained on a generated corpus; see "
        "lexsearch/tiny/vit_asset.py",
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "corpus": corpus_record(args, spec),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "init_seed": args.seed,
        "init": {"from": args.init, "record": read_record(Path(args.init))} if args.init else None,
        "minutes_train": round(minutes, 1),
        "minutes_render": round(t_render / 60, 1),
        "heldout": {k.removeprefix("vit_eval_"): round(v, 4) for k, v in report.items() if "_eval_" in k},
        "last_batch": {k.removeprefix("vit_"): round(v, 4) for k, v in report.items() if "_eval_" not in k},
        "torch": torch.__version__,
        "fingerprint": asset_fingerprint(config),
    }
    (out / RECORD_FILE).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps(record["heldout"]), f"train {minutes:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
