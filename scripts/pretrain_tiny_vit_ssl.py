"""Pretrain a tiny-preset ViT self-supervised on the broad procedural corpus (a candidate for the shipped asset).

    python scripts/pretrain_tiny_vit_ssl.py --out DIR [--objective masked-edges --steps 3000 --n-train 30000]

The corpus is rendered in memory by :mod:`lexsearch.tiny.corpus` with its own fixed seed (104729): images
only, no labels, nothing from the toy world or any evaluated world. ``--objective`` picks the training:
masked-patch reconstruction of pixels, of colour-blind edge maps (the default: the best of the objectives
measured in docs/toy-results.md) or of each patch's 5 x 5-patch edge context
(:func:`lexsearch.tiny.ssl_vision.pretrain_vision_ssl`; the held-out part of the corpus gives the recorded
reconstruction error), or two-view InfoNCE (:func:`lexsearch.tiny.ssl_contrast.pretrain_vision_contrastive`). Writes ``model.safetensors`` (float16) + ``config.json`` +
``pretrain_record.json`` into ``--out``, the layout of lexsearch/tiny/assets/tiny_vit. How well the result
transfers is measured apart from it, on labelled worlds it never saw (``bench/vit_probe.py``).
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


class SSLCorpusSpec:
    """Which corpus images are trained on (and which are held out for the loss figure)."""

    seed = 104729  # the corpus's own seed, far from the small seeds users and tests give generators
    n_train = 30000
    n_eval = 500


def main() -> int:
    spec = SSLCorpusSpec()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--n-train", type=int, default=spec.n_train)
    ap.add_argument("--n-eval", type=int, default=spec.n_eval)
    ap.add_argument("--corpus-seed", type=int, default=spec.seed)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0, help="initialisation, masks and batch order")
    ap.add_argument("--vision", default="{}", help="TINY_VISION overrides (JSON), for experiments")
    ap.add_argument("--out", required=True)
    ap.add_argument("--print-every", type=int, default=250)
    ap.add_argument(
        "--objective",
        choices=["contrastive", "masked", "masked-edges", "masked-context-edges"],
        default="masked-edges",
        help="two-view InfoNCE (lexsearch.tiny.ssl_contrast) or masked-patch reconstruction (ssl_vision)",
    )
    ap.add_argument("--dense-weight", type=float, default=1.0, help="contrastive: weight of the patch term")
    ap.add_argument("--mask-ratio", type=float, default=0.5, help="masked: share of 2x2-patch blocks hidden")
    ap.add_argument("--min-scale", type=float, default=0.45, help="contrastive: smallest crop side")
    ap.add_argument("--temperature", type=float, default=0.2, help="contrastive: InfoNCE temperature")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch
    from transformers import Dinov2Config, Dinov2Model

    from lexsearch.model.presets import preset_config
    from lexsearch.tiny.config import PretrainConfig
    from lexsearch.tiny.corpus import corpus_pixels
    from lexsearch.tiny.ssl_contrast import pretrain_vision_contrastive
    from lexsearch.tiny.ssl_vision import pretrain_vision_ssl
    from lexsearch.tiny.vit_asset import RECORD_FILE, asset_fingerprint

    config = preset_config("tiny")
    config.vision_config = dict(config.vision_config, **json.loads(args.vision))
    t0 = time.time()
    train_x = corpus_pixels(range(args.n_train), args.corpus_seed, config)
    eval_x = corpus_pixels(range(args.n_train, args.n_train + args.n_eval), args.corpus_seed, config)
    t_render = time.time() - t0
    print(f"rendered {args.n_train} + {args.n_eval} corpus images in {t_render:.0f} s", flush=True)

    torch.manual_seed(args.seed)
    vision = Dinov2Model(Dinov2Config(**config.vision_config))
    cfg = PretrainConfig(
        seed=args.seed, vit_batch_size=args.batch_size, vit_lr=args.lr, vit_mask_ratio=args.mask_ratio
    )
    window: list[dict] = []
    t1 = time.time()

    def progress(stage: str, step: int, total: int, metrics: dict) -> None:
        window.append(metrics)
        if step % args.print_every == 0 or step == total:
            mean = {k: sum(m[k] for m in window) / len(window) for k in window[0]}
            rate = step / (time.time() - t1)
            figures = "  ".join(f"{k} {v:.4f}" for k, v in mean.items())
            print(f"step {step}/{total}  {figures}  ({rate:.2f} steps/s)", flush=True)
            window.clear()

    mean, std = config.image_mean, config.image_std
    torch.manual_seed(args.seed + 2)
    if args.objective.startswith("masked"):
        target = args.objective.removeprefix("masked-") if args.objective != "masked" else "pixels"
        report = pretrain_vision_ssl(
            vision,
            train_x,
            cfg,
            progress,
            steps=args.steps,
            mean=mean,
            std=std,
            eval_images=eval_x,
            target=target,
        )
        objective = {
            args.objective: {"mask_ratio": cfg.vit_mask_ratio, "visible_weight": cfg.vit_visible_weight}
        }
    else:
        report = pretrain_vision_contrastive(
            vision,
            train_x,
            args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            dense_weight=args.dense_weight,
            temperature=args.temperature,
            min_scale=args.min_scale,
            mean=mean,
            std=std,
            progress=progress,
        )
        report = {f"vit_{k}": v for k, v in report.items()}
        objective = {
            "contrastive": {
                "dense_weight": args.dense_weight,
                "temperature": args.temperature,
                "min_scale": args.min_scale,
            }
        }
    minutes = (time.time() - t1) / 60
    heldout = {k.removeprefix("vit_eval_"): round(v, 4) for k, v in report.items() if "_eval_" in k}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # float16 halves the asset; the loader casts back to float32.
    vision.half().save_pretrained(out)
    record = {
        "what": "tiny preset ViT (DINOv2 architecture) pretrained self-supervised (masked-patch "
        "reconstruction, no labels) on a broad procedural corpus; see lexsearch/tiny/vit_asset.py",
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "corpus": {
            "generator": "lexsearch.tiny.corpus.render_corpus_image",
            "seed": args.corpus_seed,
            "n_train": args.n_train,
            "eval_images": [args.n_train, args.n_train + args.n_eval],
        },
        "objective": objective,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "init_seed": args.seed,
        "minutes_train": round(minutes, 1),
        "minutes_render": round(t_render / 60, 1),
        "heldout": heldout,
        "last_batch": {k.removeprefix("vit_"): round(v, 4) for k, v in report.items() if "_eval_" not in k},
        "torch": torch.__version__,
        "fingerprint": asset_fingerprint(config),
    }
    (out / RECORD_FILE).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps(record["heldout"]), f"train {minutes:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
