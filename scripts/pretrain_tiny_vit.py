"""Pretrain the tiny preset's ViT once on a generic toy corpus and save it as the shipped asset.

    python scripts/pretrain_tiny_vit.py --steps 12000 [--n-train 16000 --n-eval 1000 --out DIR]

The corpus is rendered in memory from the toy world's generator with its own fixed seed (CorpusSpec), never
from a user's data; training is :func:`lexsearch.tiny.vision.pretrain_vision` (dense per-patch shape and
colour heads + image-level presence head); the held-out part of the corpus gives the recorded accuracies.
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
    ap.add_argument("--out", default=str(ASSET_DIR))
    ap.add_argument("--print-every", type=int, default=250)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch
    from transformers import Dinov2Config, Dinov2Model

    from lexsearch.model.presets import preset_config
    from lexsearch.tiny.config import PretrainConfig
    from lexsearch.tiny.vision import pretrain_vision
    from lexsearch.tiny.vit_asset import RECORD_FILE, asset_fingerprint, corpus_targets

    config = preset_config("tiny")
    config.vision_config = dict(config.vision_config, **json.loads(args.vision))
    patch = int(config.vision_config["patch_size"])
    t0 = time.time()
    train_t = corpus_targets(range(args.n_train), args.corpus_seed, config, patch)
    eval_t = corpus_targets(range(args.n_train, args.n_train + args.n_eval), args.corpus_seed, config, patch)
    t_render = time.time() - t0
    print(f"rendered {args.n_train} + {args.n_eval} corpus images in {t_render:.0f} s", flush=True)

    torch.manual_seed(args.seed)
    vision = Dinov2Model(Dinov2Config(**config.vision_config))
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
                f"colour {mean['colour_acc']:.3f}  ({rate:.1f} steps/s)",
                flush=True,
            )
            window.clear()

    torch.manual_seed(args.seed + 2)
    report = pretrain_vision(vision, train_t, cfg, progress, eval_targets=eval_t, steps=args.steps)
    minutes = (time.time() - t1) / 60
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # float16 halves the asset; the loader casts back to float32 (the accuracies below are of the fp32 model).
    vision.half().save_pretrained(out)
    record = {
        "what": "tiny preset ViT (DINOv2 architecture) pretrained on a generic toy corpus; see "
        "lexsearch/tiny/vit_asset.py",
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "corpus": {
            "generator": "lexsearch.data.toyworld.render_scene (default ToyWorldConfig)",
            "seed": args.corpus_seed,
            "n_train": args.n_train,
            "eval_images": [args.n_train, args.n_train + args.n_eval],
            "canonical_binding": spec.canonical_binding,
        },
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "init_seed": args.seed,
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
