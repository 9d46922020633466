"""Images per second of one forward at several batch sizes: what splitting an index block into small
forwards costs (``build.CPU_FORWARD_BATCH``), and the wait between two progress updates at each size.

    python bench/forward_batch.py                          # the tiny model (built offline) on the CPU
    python bench/forward_batch.py --model DIR --device cpu
    python bench/forward_batch.py --dinov2-small           # + a DINOv2-small-sized ViT (random weights)

Printed per batch size: images/s (best of --repeats passes over --images images) and seconds per forward.
The DINOv2-small line times the backbone alone (transformers ``Dinov2Model`` from its published config,
224 px): the part of a real model's image forward that grows with the batch.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = (1, 4, 8, 16, 32)


def _rates(forward, pixels: np.ndarray, sizes, repeats: int) -> list[tuple[int, float, float]]:
    out = []
    for bs in sizes:
        forward(pixels[:bs])  # warm-up (allocations, kernel choice)
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            for i in range(0, len(pixels) - bs + 1, bs):
                forward(pixels[i : i + bs])
            best = min(best, time.perf_counter() - t)
        n = (len(pixels) // bs) * bs
        out.append((bs, n / best, best / (n // bs)))
    return out


def _print(name: str, rows) -> None:
    print(name)
    for bs, rate, per in rows:
        print(f"  batch {bs:3d}: {rate:8.1f} images/s, {per:7.3f} s per forward")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="Model folder (default: the tiny model, built offline)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dinov2-small", action="store_true", help="Also time a DINOv2-small-sized backbone")
    args = ap.parse_args(argv)

    import torch

    from lexsearch.model import Encoder

    print(f"torch threads: {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from index_throughput import TINY_TEXTS

            from lexsearch.tiny.builder import build_tiny_checkpoint

            model = build_tiny_checkpoint(Path(tmp) / "tiny", TINY_TEXTS, seed=0)
        enc = Encoder.load(model, device=args.device)
        s = enc.config.image_size
        pixels = np.random.default_rng(0).normal(size=(args.images, 3, s, s)).astype(np.float32)
        _print(
            f"encoder.encode_pixels ({model}, {s} px)", _rates(enc.encode_pixels, pixels, SIZES, args.repeats)
        )
    if args.dinov2_small:
        from transformers import Dinov2Config, Dinov2Model

        cfg = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=224)
        vit = Dinov2Model(cfg).eval().to(args.device)
        pixels = np.random.default_rng(0).normal(size=(args.images, 3, 224, 224)).astype(np.float32)

        def forward(batch: np.ndarray) -> None:
            with torch.inference_mode():
                vit(pixel_values=torch.from_numpy(batch).to(args.device))

        _print(
            "DINOv2-small-sized backbone (random weights, 224 px)",
            _rates(forward, pixels, SIZES, args.repeats),
        )


if __name__ == "__main__":
    main()
