"""Contrastive self-supervised pretraining for the tiny ViT: two views of one image, colour changed, shape kept.

Masked-patch reconstruction (:mod:`lexsearch.tiny.ssl_vision`) spends the tiny ViT's capacity on pixels:
colour is most of what there is to reconstruct. Here the two views of an image differ in everything a shape
word does not depend on, and the ViT is trained to tell which views belong together (SimCLR's InfoNCE, Chen
et al., 2020 [choice: cheaper per step than DINO's momentum teacher and multi-crop on two CPU cores]):

- geometry: a random crop (45%-100% of the side), flips and quarter turns, so position and scale vary;
- colour: a random hue rotation about the grey axis, channel permutation, inversion, greyscale, brightness
  and contrast, applied to the whole view, so colour (object and background alike) carries no information
  about which views match; the outline of every object survives all of them.

Two terms: the CLS tokens of the two views (the image as a whole), and a dense term on patch tokens: a patch
of one view and the patch of the other view that covers the same point of the image are positives, every
other sampled patch of the batch a negative (DenseCL / VADeR-style [choice]). Patch tokens are what the
LexVLA read-out uses; the CLS term alone leaves them local. Projection heads are thrown away.

Measured so far (docs/toy-results.md): at 600 steps neither variant gives the patch tokens more linearly
readable shape than a random ViT's, though both losses fall well below chance.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from lexsearch.tiny.config import Progress, warmup_cosine

log = logging.getLogger(__name__)


def _rand(shape, gen, lo=0.0, hi=1.0):
    return torch.rand(shape, generator=gen) * (hi - lo) + lo


def _geometry(batch: int, gen: torch.Generator, min_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image affine maps view -> image, in normalised coordinates: (B, 2, 2) matrices, (B, 2) offsets."""
    scale = _rand(batch, gen, min_scale, 1.0)
    k = torch.randint(0, 4, (batch,), generator=gen).float() * (math.pi / 2)
    flip = torch.where(torch.rand(batch, generator=gen) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(k).round(), torch.sin(k).round()
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    mat = rot * torch.stack([flip, torch.ones(batch)], -1)[:, None, :] * scale[:, None, None]
    off = (torch.rand((batch, 2), generator=gen) * 2 - 1) * (1 - scale)[:, None]
    return mat, off


_GREY_AXIS = torch.ones(3) / math.sqrt(3.0)


def recolour(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(B, 3, S, S) in [0, 1] -> same, each image's colours changed by one random colour map."""
    b = x.shape[0]
    # Hue rotation about the grey axis (Rodrigues): greys stay grey, every hue goes anywhere.
    angle = _rand(b, gen, 0, 2 * math.pi)
    k = torch.tensor([[0.0, -1, 1], [1, 0, -1], [-1, 1, 0]]) / math.sqrt(3.0)
    eye = torch.eye(3)
    rot = eye + torch.sin(angle)[:, None, None] * k + (1 - torch.cos(angle))[:, None, None] * (k @ k)
    perm = torch.stack([torch.randperm(3, generator=gen) for _ in range(b)])
    rot = rot[torch.arange(b)[:, None], perm]  # channel permutation
    y = torch.einsum("bij,bjhw->bihw", rot, x).clamp(0, 1)
    invert = (torch.rand(b, generator=gen) < 0.2)[:, None, None, None]
    y = torch.where(invert, 1 - y, y)
    grey = (torch.rand(b, generator=gen) < 0.2)[:, None, None, None]
    y = torch.where(grey, y.mean(1, keepdim=True).expand_as(y), y)
    mean = y.mean((1, 2, 3), keepdim=True)
    contrast = _rand((b, 1, 1, 1), gen, 0.6, 1.4)
    bright = _rand((b, 1, 1, 1), gen, -0.2, 0.2)
    return ((y - mean) * contrast + mean + bright).clamp(0, 1)


def make_views(x01: torch.Tensor, gen: torch.Generator, min_scale: float = 0.45):
    """A view of each image in ``x01`` (B, 3, S, S, [0, 1]) and its view -> image map (matrix, offset)."""
    mat, off = _geometry(x01.shape[0], gen, min_scale)
    theta = torch.cat([mat, off[:, :, None]], -1)
    grid = F.affine_grid(theta, list(x01.shape), align_corners=False)
    v = F.grid_sample(x01, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return recolour(v, gen), mat, off


def _matches(mat_a, off_a, mat_b, off_b, grid: int):
    """For every patch of view a, the index of view b's patch at the same image point (-1 when outside)."""
    c = (torch.arange(grid) + 0.5) / grid * 2 - 1
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    u = torch.stack([xx.flatten(), yy.flatten()], -1)  # (P, 2) as affine_grid's (x, y)
    s = torch.einsum("bij,pj->bpi", mat_a, u) + off_a[:, None]
    ub = torch.einsum("bij,bpj->bpi", torch.linalg.inv(mat_b), s - off_b[:, None])
    cell = ((ub + 1) / 2 * grid).floor().long()
    ok = ((cell >= 0) & (cell < grid)).all(-1)
    idx = cell[..., 1] * grid + cell[..., 0]
    return torch.where(ok, idx, torch.full_like(idx, -1))


def _info_nce(za: torch.Tensor, zb: torch.Tensor, temperature: float) -> torch.Tensor:
    za, zb = F.normalize(za, dim=-1), F.normalize(zb, dim=-1)
    logits = za @ zb.T / temperature
    target = torch.arange(za.shape[0])
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def _head(width: int, out: int = 64) -> nn.Module:
    return nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, out))


def pretrain_vision_contrastive(
    vision,
    images: torch.Tensor,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    dense_weight: float = 1.0,
    patches_per_image: int = 8,
    temperature: float = 0.2,
    min_scale: float = 0.45,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    progress: Progress | None = None,
) -> dict:
    """Train the ViT ``vision`` in place on ``images`` ((N, S, S, 3) uint8) alone; returns last figures."""
    width = int(vision.config.hidden_size)
    grid = int(vision.config.image_size) // int(vision.config.patch_size)
    prefix = 1 + int(getattr(vision.config, "num_register_tokens", 0) or 0)
    cls_head, patch_head = _head(width), _head(width)
    params = [*vision.parameters(), *cls_head.parameters(), *patch_head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05, betas=(0.9, 0.95))
    warmup = max(1, min(steps // 10, 300))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, steps))
    gen = torch.Generator().manual_seed(seed)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    sd = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    n = images.shape[0]
    vision.train()
    metrics: dict = {}
    for step in range(1, steps + 1):
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        x01 = images[idx].permute(0, 3, 1, 2).float() / 255.0
        va, mat_a, off_a = make_views(x01, gen, min_scale)
        vb, mat_b, off_b = make_views(x01, gen, min_scale)
        out = vision(pixel_values=(torch.cat([va, vb]) - m) / sd).last_hidden_state
        cls_a, cls_b = out[:batch_size, 0], out[batch_size:, 0]
        loss_cls = _info_nce(cls_head(cls_a), cls_head(cls_b), temperature)
        loss = loss_cls
        loss_dense = torch.zeros(())
        if dense_weight > 0:
            match = _matches(mat_a, off_a, mat_b, off_b, grid)  # (B, P)
            score = torch.rand(match.shape, generator=gen) + (match >= 0).float() * 2
            pick = score.topk(patches_per_image, dim=1).indices
            bi = torch.arange(batch_size)[:, None].expand_as(pick)
            other = match[bi, pick]
            keep = other >= 0
            pa = out[:batch_size, prefix:][bi[keep], pick[keep]]
            pb = out[batch_size:, prefix:][bi[keep], other[keep]]
            loss_dense = _info_nce(patch_head(pa), patch_head(pb), temperature)
            loss = loss + dense_weight * loss_dense
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        metrics = {"loss": loss.item(), "cls_nce": loss_cls.item(), "dense_nce": loss_dense.item()}
        if progress is not None:
            progress("vit", step, steps, metrics)
    vision.eval()
    log.info("tiny ViT contrastive pretraining: %s", ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return metrics
