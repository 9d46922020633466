"""What the dense heads' InfoNCE does to the lexical model: its share of the adapter / Z_img / LoRA gradient.

    python bench/dense_backprop.py [--steps 20]

On an untrained tiny checkpoint and one fixed batch of toy captions, with the tiny preset's loss
(``dense_weight`` 0.5), prints for ``dense_backprop`` false (the default: the heads read detached features)
and true: the norm of the lexical parts' gradient from the lexical loss and from the dense term, their
cosine, and after ``--steps`` Adam steps how far the lexical vectors of held-out captions moved from a
run without dense heads (mean 1 - cosine).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

TEXTS = [
    f"a {size} {colour} {shape}"
    for size in ("small", "large")
    for colour in ("red", "green", "blue", "yellow")
    for shape in ("circle", "square", "star")
]
LEXICAL = ("adapter", "z_img", "lora_")


def _lexical_grad(model) -> torch.Tensor:
    parts = [
        p.grad.flatten() if p.grad is not None else torch.zeros(p.numel())
        for n, p in model.named_parameters()
        if p.requires_grad and any(k in n for k in LEXICAL)
    ]
    return torch.cat(parts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    from lexsearch.model import load_checkpoint
    from lexsearch.tiny.builder import build_tiny_checkpoint
    from lexsearch.train import distributed as D
    from lexsearch.train.config import train_config
    from lexsearch.train.loop import Towers, train_step

    tmp = Path(tempfile.mkdtemp(prefix="dense-backprop-"))
    ckpt = build_tiny_checkpoint(tmp / "m", TEXTS, seed=0)
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(16, 3, 64, 64, generator=g)
    train_texts, held = TEXTS[:16], TEXTS[16:]
    info = D.DistInfo()

    def run(backprop: bool, dense_weight: float):
        torch.manual_seed(0)
        model = load_checkpoint(ckpt).train()
        model.config.dense_backprop = backprop
        ids, mask = model.tokenize(train_texts)
        grads = {}
        for name, weight in (("lexical", 0.0), ("with_dense", dense_weight)):
            cfg = train_config("tiny", data="x", out="y", dense_weight=weight)
            model.zero_grad(set_to_none=True)
            train_step(Towers(model), pixels, ids, mask, 50, cfg, info, model.vocab_size)
            grads[name] = _lexical_grad(model)
        dense_part = grads["with_dense"] - grads["lexical"]
        cfg = train_config("tiny", data="x", out="y", dense_weight=dense_weight)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        for step in range(args.steps):
            opt.zero_grad(set_to_none=True)
            train_step(Towers(model), pixels, ids, mask, step, cfg, info, model.vocab_size)
            opt.step()
        model.eval()
        with torch.no_grad():
            h_ids, h_mask = model.tokenize(held)
            vecs = model.encode_text(h_ids, h_mask)[0]
        return grads["lexical"].norm(), dense_part.norm(), grads["lexical"], dense_part, vecs

    _, _, _, _, ref = run(False, 0.0)
    for backprop in (False, True):
        lex_norm, dense_norm, lex, dense, vecs = run(backprop, 0.5)
        cos = float(torch.nn.functional.cosine_similarity(lex, dense, dim=0)) if dense_norm > 0 else 0.0
        moved = float((1 - torch.nn.functional.cosine_similarity(vecs, ref, dim=1)).mean())
        print(
            f"dense_backprop={str(backprop).lower():5s}  |grad lexical| {lex_norm:.4g}  |grad dense term| "
            f"{dense_norm:.4g} ({float(dense_norm / lex_norm):.1%})  cosine {cos:+.3f}  "
            f"text vectors after {args.steps} steps vs no dense loss: 1-cos {moved:.2e}"
        )


if __name__ == "__main__":
    main()
