"""What makes the tiny model's words mean something? One toy-world run with given levers, printing figures.

    python bench/toy_words.py --model '{"init_temperature": 0.02}' --train '{"epochs": 30}' [--world DIR]

Builds (or reuses) a toy world of 2,000 training / 500 held-out images, writes an untrained tiny checkpoint
on the pretrained (cached) bases with the ModelConfig overrides, trains it with the TrainConfig overrides
through ``lexsearch.train.loop.train`` and prints R@K both ways (1/sqrt(V) sparsification), explanation
precision beside its random-codebook control, PatchDis mIoU beside its random baseline, and the minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import lexsearch  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", default=os.path.join(tempfile.gettempdir(), "lexsearch-toy-2000"))
    ap.add_argument("--model", default="{}", help="ModelConfig overrides (JSON)")
    ap.add_argument("--train", default="{}", help="TrainConfig overrides (JSON)")
    ap.add_argument("--pretrain", default="{}", help="PretrainConfig overrides (JSON)")
    ap.add_argument("--out", default="")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from lexsearch.data.pairs import load_folder
    from lexsearch.data.toyworld import generate_toy_world
    from lexsearch.tiny.bases import PretrainConfig, write_pretrained_checkpoint
    from lexsearch.train.config import train_config
    from lexsearch.train.loop import train

    world = Path(args.world)
    for name, n, seed in (("train", 2000, 0), ("val", 500, 1)):
        if not (world / name / "toyworld.json").is_file():
            generate_toy_world(world / name, n, seed=seed, overwrite=True)
    out = Path(args.out or tempfile.mkdtemp(prefix="toywords-"))
    if out.exists():
        shutil.rmtree(out)
    t0 = time.time()
    pairs = load_folder(world / "train")
    pcfg = PretrainConfig(seed=args.seed, **json.loads(args.pretrain))
    init = out / "init"
    write_pretrained_checkpoint(
        init, world / "train", pairs.captions, pairs.images, pcfg, **json.loads(args.model)
    )
    t_pre = time.time() - t0
    cfg = train_config(
        "tiny",
        data=str(world / "train"),
        val_data=str(world / "val"),
        out=str(out / "run"),
        init=str(init),
        seed=args.seed,
        quiet=True,
        **json.loads(args.train),
    )
    result = train(cfg)
    v = result.val
    toy = v.get("toy", {})
    print(
        json.dumps(
            {
                "model": json.loads(args.model),
                "train": json.loads(args.train),
                "pretrain": json.loads(args.pretrain),
            }
        )
    )
    print(
        f"t2i R@1/5/10 {v['t2i']['R@1']:.1f}/{v['t2i']['R@5']:.1f}/{v['t2i']['R@10']:.1f}  "
        f"i2t {v['i2t']['R@1']:.1f}/{v['i2t']['R@5']:.1f}/{v['i2t']['R@10']:.1f}  "
        f"active img {v['active_img']:.1f} txt {v['active_txt']:.1f}"
    )
    if toy:
        print(
            f"explanation precision {100 * toy['explanation_precision']:.1f}% "
            f"(colour {100 * toy['colour_in_top']:.1f}"
            f"%, shape {100 * toy['shape_in_top']:.1f}%) control {100 * toy['random_codebook_control']:.1f}% "
            f"chance {100 * toy['chance']:.2f}%  "
            f"top word outside caption {100 * toy['top_word_outside_caption']:.1f}%"
        )
        print(
            f"PatchDis shape mIoU {toy.get('patchdis_miou', float('nan')):.1f} vs random "
            f"{toy.get('patchdis_random', float('nan')):.1f}"
        )
    print(
        f"minutes: pretraining+init {t_pre / 60:.2f}, training {result.minutes:.2f}, "
        f"total {(time.time() - t0) / 60:.2f} ({result.step} steps, {result.steps_per_s:.2f} steps/s)"
    )


if __name__ == "__main__":
    sys.exit(main())
