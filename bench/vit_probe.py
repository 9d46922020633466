"""What does a frozen tiny ViT know of a labelled shapes world? Linear probes on its patch tokens.

    python bench/vit_probe.py --vit shipped|random|DIR --train DIR --val DIR [--n-train 1500]
    python bench/vit_probe.py --vit shipped,random,DIR1,DIR2 --world toy=T/train:T/val --world s2=S/train:S/val

Several ViTs and worlds in one run (``--vit`` comma-separated, ``--world NAME=TRAIN:VAL`` repeated) print
one table, so candidates are compared under the same machine load.

Per-patch shape (foreground patches) and colour (all patches, background as a class) are read off the frozen
ViT's patch tokens by linear probes fitted on ``--train`` and scored on ``--val`` (both toy-world or shapes2
folders: ``labels.jsonl`` + ``masks/``). A ViT whose features are general scores well on a world it never saw;
``random`` (a freshly initialised ViT) is the floor.
"""

from __future__ import annotations

import argparse
import sys
import time

import lexsearch  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)


def _features(vision, pixels, prefix: int):
    import torch

    with torch.no_grad():
        return torch.cat(
            [
                vision(pixel_values=pixels[i : i + 128]).last_hidden_state[:, prefix:]
                for i in range(0, len(pixels), 128)
            ]
        )


def _probe(x_train, y_train, x_val, y_val, n_classes: int, steps: int = 300) -> float:
    import torch

    torch.manual_seed(0)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-5
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    head = torch.nn.Linear(x_train.shape[1], n_classes)
    opt = torch.optim.Adam(head.parameters(), lr=0.02)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(head(x_train), y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((head(x_val).argmax(-1) == y_val).float().mean())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vit", default="shipped")
    ap.add_argument("--train")
    ap.add_argument("--val")
    ap.add_argument("--world", action="append", default=[], help="NAME=TRAIN_DIR:VAL_DIR (repeatable)")
    ap.add_argument("--n-train", type=int, default=1500)
    ap.add_argument("--n-val", type=int, default=500)
    args = ap.parse_args()

    import torch
    from transformers import Dinov2Config, Dinov2Model

    from lexsearch.model.presets import preset_config
    from lexsearch.tiny.vision import load_vision_targets
    from lexsearch.tiny.vit_asset import ASSET_DIR, load_shipped_vit

    config = preset_config("tiny")
    worlds = [w.split("=", 1) for w in args.world]
    if args.train and args.val:
        worlds.insert(0, ["world", f"{args.train}:{args.val}"])
    if not worlds:
        ap.error("give --train and --val, or --world NAME=TRAIN:VAL")
    patch = int(config.vision_config["patch_size"])
    data = {}
    for name, dirs in worlds:
        train_dir, val_dir = dirs.split(":", 1)
        data[name] = (
            load_vision_targets(train_dir, config, patch, args.n_train),
            load_vision_targets(val_dir, config, patch, args.n_val),
        )
    rows = []
    for spec in args.vit.split(","):
        if spec == "random":
            torch.manual_seed(0)
            vision = Dinov2Model(Dinov2Config(**config.vision_config))
        else:
            vision = load_shipped_vit(ASSET_DIR if spec == "shipped" else spec)
        vision.eval()
        row = [spec]
        for name, (tr, va) in data.items():
            t0 = time.time()
            ftr, fva = _features(vision, tr.pixels, 1), _features(vision, va.pixels, 1)
            ftr, fva = ftr.flatten(0, 1), fva.flatten(0, 1)
            s_tr, s_va = tr.patch_shape.flatten(), va.patch_shape.flatten()
            c_tr, c_va = tr.patch_colour.flatten(), va.patch_colour.flatten()
            fg_tr, fg_va = s_tr > 0, s_va > 0
            shape = _probe(ftr[fg_tr], s_tr[fg_tr], fva[fg_va], s_va[fg_va], len(tr.shapes) + 1)
            fg_colour = _probe(ftr[fg_tr], c_tr[fg_tr], fva[fg_va], c_va[fg_va], len(tr.colours) + 1)
            colour = _probe(ftr, c_tr, fva, c_va, len(tr.colours) + 1)
            majority = float((s_va[fg_va].mode().values == s_va[fg_va]).float().mean())
            row += [f"{shape:.3f}", f"{fg_colour:.3f}", f"{colour:.3f}"]
            print(
                f"vit={spec} world={name}: linear probe, held-out patches: shape (fg) {shape:.3f} "
                f"(majority {majority:.3f}), colour (fg) {fg_colour:.3f}, colour+background (all) "
                f"{colour:.3f}  ({time.time() - t0:.0f} s)",
                flush=True,
            )
        rows.append(row)
    head = ["vit"] + [f"{n}: {k}" for n in data for k in ("shape (fg)", "colour (fg)", "colour (all)")]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
