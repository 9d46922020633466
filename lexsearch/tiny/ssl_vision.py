"""Self-supervised pretraining for the tiny ViT: masked-patch reconstruction from images alone (no labels).

DINOv2 learns from images alone; no label of any data set it is later used on shapes it. This is the tiny
ViT's way to the same, SimMIM-style masked image modelling (Xie et al., 2022) [choice]: blocks of 2x2 patches
(half the image) are replaced by the ViT's mask token and a linear head on each patch token reconstructs that
patch's pixels (L1, in the normalised colour space). Filling in a hidden part of an object needs the object's
colour and outline from the visible rest; visible patches reconstruct themselves at a lower weight, so every
token also keeps its own colour and edges. The head is thrown away.

Pixels are mostly colour, and colour is readable from any ViT, random ones included; ``target="edges"``
makes the input colour-changed and the target each patch's colour-blind edge map, so the model spends its
capacity on outlines. ``scripts/pretrain_tiny_vit_ssl.py`` runs it on the broad procedural corpus of
:mod:`lexsearch.tiny.corpus`. It is not yet what the tiny preset ships: at the lengths measured so far (up to
a few thousand steps) its patch tokens carry far less linearly readable shape than the shipped ViT's
(docs/toy-results.md, ``bench/vit_probe.py``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import nn

from lexsearch.tiny.config import PretrainConfig, Progress, warmup_cosine

log = logging.getLogger(__name__)


def _block_mask(batch: int, grid: int, ratio: float, block: int, gen: torch.Generator) -> torch.Tensor:
    """(B, grid * grid) bool: ``ratio`` of the ``block`` x ``block`` patch blocks of each image masked."""
    cells = math.ceil(grid / block)
    n_mask = max(1, round(ratio * cells * cells))
    scores = torch.rand((batch, cells * cells), generator=gen)
    chosen = scores.argsort(1)[:, :n_mask]
    coarse = torch.zeros((batch, cells * cells), dtype=torch.bool)
    coarse[torch.arange(batch)[:, None], chosen] = True
    fine = coarse.view(batch, cells, 1, cells, 1).expand(-1, -1, block, -1, block)
    return fine.reshape(batch, cells * block, cells * block)[:, :grid, :grid].reshape(batch, grid * grid)


def _patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, S, S) -> (B, P, 3 * patch * patch), patches in row-major order as the ViT embeds them."""
    b, c, s, _ = x.shape
    g = s // patch
    return x.view(b, c, g, patch, g, patch).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * patch * patch)


def edge_map(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) -> (B, 1, S, S): Sobel gradient magnitude summed over channels, a colour-blind outline."""
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 8
    k = torch.stack([kx, kx.T])[:, None].repeat(3, 1, 1, 1)  # (6, 1, 3, 3), x and y per channel
    g = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=3)
    return g.view(x.shape[0], 3, 2, *x.shape[-2:]).pow(2).sum(2).add(1e-6).sqrt().sum(1, keepdim=True)


def pretrain_vision_ssl(
    vision,
    images: torch.Tensor,
    cfg: PretrainConfig,
    progress: Progress | None = None,
    steps: int | None = None,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    eval_images: torch.Tensor | None = None,
    target: str = "pixels",
) -> dict:
    """Train the ViT ``vision`` in place by masked-patch reconstruction on ``images`` alone; returns figures.

    ``images`` are (N, S, S, 3) uint8 (kept small in memory; normalised per batch with ``mean`` / ``std``) or
    (N, 3, S, S) float already normalised. ``steps`` overrides ``cfg.vit_epochs`` (epochs over ``images``)
    as the length of the run; learning rate, batch size, mask ratio and seed come from ``cfg``. ``target``
    "edges" reconstructs each patch's :func:`edge_map` instead of its pixels, from a colour-changed input
    (:func:`lexsearch.tiny.ssl_contrast.recolour`), so colour is neither input cue nor target. With
    ``eval_images`` the report adds their masked-patch L1 (fixed masks) before and after training.
    """
    width = int(vision.config.hidden_size)
    patch = int(vision.config.patch_size)
    prefix = 1 + int(getattr(vision.config, "num_register_tokens", 0) or 0)
    grid = int(vision.config.image_size) // patch
    dims = {"pixels": 3 * patch * patch, "edges": patch * patch, "context-edges": (5 * patch // 2) ** 2}
    head = nn.Linear(width, dims[target])
    params = list(vision.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.vit_lr, weight_decay=0.05, betas=(0.9, 0.95))
    n = images.shape[0]
    steps_per_epoch = max(1, math.ceil(n / cfg.vit_batch_size))
    total = steps if steps is not None else cfg.vit_epochs * steps_per_epoch
    warmup = max(1, min(total // 20, 500))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, total))
    gen = torch.Generator().manual_seed(cfg.seed)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    sd = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def normalise(x: torch.Tensor) -> torch.Tensor:
        return (x.permute(0, 3, 1, 2).float() / 255.0 - m) / sd if x.dtype == torch.uint8 else x

    @torch.no_grad()
    def heldout_l1() -> float:
        was = vision.training
        vision.eval()
        g, total_err, count = torch.Generator().manual_seed(12345), 0.0, 0
        for i in range(0, eval_images.shape[0], 128):
            x = normalise(eval_images[i : i + 128])
            mask = _block_mask(x.shape[0], x.shape[-1] // patch, cfg.vit_mask_ratio, 2, g)
            tokens = vision(pixel_values=x, bool_masked_pos=mask).last_hidden_state[:, prefix:]
            err = _error(head(tokens), x)
            total_err, count = total_err + float(err[mask].sum()), count + int(mask.sum())
        vision.train(was)
        return total_err / max(1, count)

    def _error(pred: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(B, P) reconstruction error of every patch. Edge maps are sparse: L1 would be won by predicting
        no edge anywhere, so they use squared error."""
        if target == "pixels":
            return (pred - _patchify(x, patch)).abs().mean(-1)
        edges = edge_map(x * sd + m) * 2
        if target == "edges":
            return (pred - _patchify(edges, patch)).pow(2).mean(-1)
        # context-edges: the outline of the 5 x 5-patch window around each patch, at half resolution, so a
        # patch token has to know the whole object it belongs to, not only its own pixels.
        half = torch.nn.functional.avg_pool2d(edges, 2)
        p2 = patch // 2
        win = torch.nn.functional.unfold(torch.nn.functional.pad(half, (2 * p2,) * 4), 5 * p2, stride=p2)
        return (pred - win.transpose(1, 2)).pow(2).mean(-1)

    before = heldout_l1() if eval_images is not None else None
    vision.train()
    step, metrics = 0, {}
    while step < total:
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.vit_batch_size):
            if step >= total:
                break
            x = normalise(images[order[start : start + cfg.vit_batch_size]])
            # Flips and quarter turns: no orientation is special in a generic corpus.
            if torch.rand((), generator=gen) < 0.5:
                x = x.flip(-1)
            x = torch.rot90(x, int(torch.randint(0, 4, (), generator=gen)), dims=(-2, -1))
            if target != "pixels":
                from lexsearch.tiny.ssl_contrast import recolour

                x = (recolour(x * sd + m, gen) - m) / sd
            mask = _block_mask(x.shape[0], grid, cfg.vit_mask_ratio, 2, gen)
            tokens = vision(pixel_values=x, bool_masked_pos=mask).last_hidden_state[:, prefix:]
            err = _error(head(tokens), x)  # (B, P)
            loss_masked = err[mask].mean()
            loss_visible = err[~mask].mean()
            loss = loss_masked + cfg.vit_visible_weight * loss_visible
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            metrics = {
                "loss": float(loss.detach()),
                "masked_l1": float(loss_masked.detach()),
                "visible_l1": float(loss_visible.detach()),
            }
            if progress is not None:
                progress("vit", step, total, metrics)
    vision.eval()
    if eval_images is not None:
        metrics.update({"eval_masked_l1_before": before, "eval_masked_l1": heldout_l1()})
    log.info("tiny ViT pretraining: %s", ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return {f"vit_{k}": v for k, v in metrics.items()}
