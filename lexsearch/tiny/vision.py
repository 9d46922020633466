"""The tiny ViT stand-in's pretraining: what DINOv2's pretraining gives the paper for free.

ViT stand-in (supervised dense + image-level heads on toy labels) [choice]
    DINOv2's patch features are known to segment objects linearly and its CLS token to classify them; that is
    what PatchDis and the explanation metric exploit. The fastest way to give a 4-layer ViT the same on two
    CPU cores is supervision from toy ground truth: a linear head on every patch token predicts the shape and
    the colour under that patch (background included), and a linear head on CLS predicts which colours and
    shapes the image contains (multi-label). The heads are thrown away; only the backbone is kept (and frozen
    by LexVLA training), so the words still have to be learnt by LexVLA from captions alone. The shipped ViT
    (:mod:`lexsearch.tiny.vit_asset`) is this recipe run once, far longer, on a generic corpus; per-run
    pretraining on the training images is the fallback when a vision config does not fit it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lexsearch.errors import DataError
from lexsearch.model.config import ModelConfig
from lexsearch.tiny.config import PretrainConfig, Progress, warmup_cosine

log = logging.getLogger(__name__)


@dataclass
class VisionTargets:
    """Supervision for the ViT stand-in: per-patch shape/colour classes and image-level presence."""

    pixels: torch.Tensor  # (N, 3, S, S) normalised
    patch_shape: torch.Tensor  # (N, P) long, 0 = background, k = shapes[k - 1]
    patch_colour: torch.Tensor  # (N, P) long, 0 = background, k = colours[k - 1]
    present: torch.Tensor  # (N, n_shapes + n_colours) float 0/1
    shapes: list[str]
    colours: list[str]
    # (N, P, D) float: a regression target per patch (the object's shape descriptors), trained on
    # foreground patches only; None = no such head (the toy-label recipe)
    patch_geometry: torch.Tensor | None = None
    # (D,) long: where each of patch_geometry's dims goes in a horizontally flipped image (a silhouette's
    # columns swap; descriptors stay); None = every dim stays
    geometry_flip: torch.Tensor | None = None


def patch_targets(
    mask: np.ndarray,
    image_shapes: Sequence[tuple[str, str]],
    shapes: Sequence[str],
    colours: Sequence[str],
    patch_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-patch shape ids, per-patch colour ids (0 = background) and the image's multi-hot presence row.

    ``mask`` (S, S) holds shape category ids (index in ``shapes`` + 1); ``image_shapes`` are the image's
    (colour, shape) pairs (each shape at most once per image, as the toy world draws them).
    """
    grid = mask.shape[0] // patch_size
    colour_of = np.zeros(len(shapes) + 1, dtype=np.int64)
    for colour, shape in image_shapes:
        colour_of[shapes.index(shape) + 1] = colours.index(colour) + 1
    # Majority class of each patch's pixels (background wins ties only when it is the majority).
    cells = mask.reshape(grid, patch_size, grid, patch_size).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
    counts = np.stack([(cells == c).sum(1) for c in range(len(shapes) + 1)], axis=1)  # (P, C+1)
    shape_ids = counts.argmax(1)
    row = np.zeros(len(shapes) + len(colours), dtype=np.float32)
    for colour, shape in image_shapes:
        row[shapes.index(shape)] = 1.0
        row[len(shapes) + colours.index(colour)] = 1.0
    return shape_ids, colour_of[shape_ids], row


def pretraining_size(model_config: ModelConfig) -> int:
    """The side the tiny ViT is pretrained at: its own config's ``image_size``. A model may feed it larger
    images (the tiny preset: 96 px), its position embeddings interpolated as DINOv2's are."""
    return int((model_config.vision_config or {}).get("image_size") or model_config.image_size)


def load_vision_targets(
    data_root: Path,
    model_config: ModelConfig,
    patch_size: int,
    max_images: int,
    image_keys: Sequence[str] | None = None,
) -> VisionTargets | None:
    """Read a toy world's images, masks and labels (only ``image_keys`` when given, so held-out images stay
    unseen); None when the folder has no toy labels."""
    from PIL import Image

    from lexsearch.data.toyworld import read_labels
    from lexsearch.model.images import open_image, preprocess

    data_root = Path(data_root)
    if not (data_root / "labels.jsonl").is_file():
        return None
    labels = read_labels(data_root)
    meta_path = data_root / "toyworld.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        shapes, colours = list(meta["shape_categories"]), list(meta["colour_categories"])
    else:
        shapes = sorted({s.shape for lab in labels.values() for s in lab.shapes})
        colours = sorted({s.colour for lab in labels.values() for s in lab.shapes})
    keys = [k for k in (image_keys if image_keys is not None else sorted(labels)) if k in labels][:max_images]
    if not keys:
        return None
    size = pretraining_size(model_config)
    pixels, patch_shape, patch_colour, present = [], [], [], []
    for key in keys:
        lab = labels[key]
        pixels.append(
            preprocess(open_image(data_root / key), size, model_config.image_mean, model_config.image_std)
        )
        mask_path = data_root / "masks" / Path(key).name
        if not mask_path.is_file():
            raise DataError(f"{mask_path}: toy mask missing (regenerate the toy world)")
        with Image.open(mask_path) as im:
            # Nearest resize keeps class ids; the mask holds shape category ids (index in shapes + 1).
            mask = np.asarray(im.convert("L").resize((size, size), Image.Resampling.NEAREST), dtype=np.int64)
        row = patch_targets(mask, [(s.colour, s.shape) for s in lab.shapes], shapes, colours, patch_size)
        patch_shape.append(row[0])
        patch_colour.append(row[1])
        present.append(row[2])
    return VisionTargets(
        pixels=torch.from_numpy(np.stack(pixels)),
        patch_shape=torch.from_numpy(np.stack(patch_shape)),
        patch_colour=torch.from_numpy(np.stack(patch_colour)),
        present=torch.from_numpy(np.stack(present)),
        shapes=shapes,
        colours=colours,
    )


class _VisionHeads(nn.Module):
    """Throw-away linear probes that carry the supervision into the backbone."""

    def __init__(self, width: int, n_shapes: int, n_colours: int, n_geometry: int = 0) -> None:
        super().__init__()
        self.patch_shape = nn.Linear(width, n_shapes + 1)
        self.patch_colour = nn.Linear(width, n_colours + 1)
        self.present = nn.Linear(width, n_shapes + n_colours)
        self.geometry = nn.Linear(width, n_geometry) if n_geometry else None


def pretrain_vision(
    vision,
    targets: VisionTargets,
    cfg: PretrainConfig,
    progress: Progress | None = None,
    eval_targets: VisionTargets | None = None,
    steps: int | None = None,
    geometry_weight: float = 1.0,
    shape_weight: float = 1.0,
) -> dict:
    """Train the ViT ``vision`` in place on the dense + image-level toy supervision; returns accuracies
    (the last batch's, and on ``eval_targets`` when given).

    ``steps`` overrides ``cfg.vit_epochs`` (epochs over ``targets``) as the length of the run; the
    learning rate, batch size and seed always come from ``cfg``.
    """
    width = int(vision.config.hidden_size)
    prefix = 1 + int(getattr(vision.config, "num_register_tokens", 0) or 0)
    geometry = targets.patch_geometry
    heads = _VisionHeads(
        width, len(targets.shapes), len(targets.colours), 0 if geometry is None else geometry.shape[-1]
    )
    params = list(vision.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.vit_lr, weight_decay=0.05)
    n = targets.pixels.shape[0]
    steps_per_epoch = max(1, math.ceil(n / cfg.vit_batch_size))
    total = steps if steps is not None else cfg.vit_epochs * steps_per_epoch
    warmup = max(1, min(total // 20, 500))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, total))
    gen = torch.Generator().manual_seed(cfg.seed)
    vision.train()
    step, metrics = 0, {}
    while step < total:
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.vit_batch_size):
            if step >= total:
                break
            idx = order[start : start + cfg.vit_batch_size]
            x = targets.pixels[idx]
            if torch.rand((), generator=gen) < 0.5:  # horizontal flip: every toy shape is mirror-symmetric
                x = x.flip(-1)
                flip = True
            else:
                flip = False
            tokens = vision(pixel_values=x).last_hidden_state  # (B, T, Hv)
            patches, cls = tokens[:, prefix:], tokens[:, 0]
            ps, pc = targets.patch_shape[idx], targets.patch_colour[idx]
            if flip:
                ps, pc = _mirror_patches(ps), _mirror_patches(pc)
            shape_logits = heads.patch_shape(patches)
            colour_logits = heads.patch_colour(patches)
            # Shape is learnt on foreground patches only: background is ~85% of the patches and is already
            # told apart by the colour head, so an all-patch loss spends its gradient on the easy part.
            fg_mask = ps > 0
            loss_shape = (
                F.cross_entropy(shape_logits[fg_mask], ps[fg_mask])
                if fg_mask.any()
                else shape_logits.sum() * 0
            )
            loss_colour = F.cross_entropy(colour_logits.flatten(0, 1), pc.flatten())
            loss_present = F.binary_cross_entropy_with_logits(heads.present(cls), targets.present[idx])
            loss = shape_weight * loss_shape + loss_colour + loss_present
            if geometry is not None:
                pg = geometry[idx]
                if flip:
                    pg = _mirror_patches(pg)
                    if targets.geometry_flip is not None:
                        pg = pg[..., targets.geometry_flip]
                loss_geometry = (
                    F.mse_loss(heads.geometry(patches)[fg_mask], pg[fg_mask])
                    if fg_mask.any()
                    else patches.sum() * 0
                )
                loss = loss + geometry_weight * loss_geometry
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            with torch.no_grad():
                fg = ps > 0
                metrics = {
                    "loss": float(loss.detach()),
                    # Shape accuracy on foreground patches: the part that needs more than colour.
                    "shape_acc": float((shape_logits.argmax(-1)[fg] == ps[fg]).float().mean())
                    if fg.any()
                    else 0.0,
                    "colour_acc": float((colour_logits.argmax(-1) == pc).float().mean()),
                }
                if geometry is not None:
                    metrics["geometry_mse"] = float(loss_geometry.detach())
            if progress is not None:
                progress("vit", step, total, metrics)
    vision.eval()
    if eval_targets is not None:
        metrics.update(_vision_eval(vision, heads, eval_targets, prefix))
    log.info("tiny ViT pretraining: %s", ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return {f"vit_{k}": v for k, v in metrics.items()}


def _mirror_patches(t: torch.Tensor) -> torch.Tensor:
    """Per-patch targets (B, P, ...) of horizontally flipped images: each grid row reversed."""
    g = math.isqrt(t.shape[1])
    return t.view(t.shape[0], g, g, *t.shape[2:]).flip(2).reshape(t.shape)


@torch.no_grad()
def _vision_eval(vision, heads: _VisionHeads, targets: VisionTargets, prefix: int) -> dict:
    """Held-out accuracies of the probes: foreground patch shape / colour, and image-level presence."""
    shape_hits = colour_hits = fg_total = present_hits = 0
    geometry_err = 0.0
    if targets.patch_geometry is not None:  # the best constant guess: the held-out targets' own mean
        fg_geometry = targets.patch_geometry[targets.patch_shape > 0]
        constant = float(((fg_geometry - fg_geometry.mean(0)) ** 2).mean())
    for start in range(0, targets.pixels.shape[0], 128):
        sl = slice(start, start + 128)
        tokens = vision(pixel_values=targets.pixels[sl]).last_hidden_state
        ps, pc = targets.patch_shape[sl], targets.patch_colour[sl]
        fg = ps > 0
        shape_hits += int((heads.patch_shape(tokens[:, prefix:]).argmax(-1)[fg] == ps[fg]).sum())
        colour_hits += int((heads.patch_colour(tokens[:, prefix:]).argmax(-1)[fg] == pc[fg]).sum())
        fg_total += int(fg.sum())
        if heads.geometry is not None and targets.patch_geometry is not None:
            err = (heads.geometry(tokens[:, prefix:])[fg] - targets.patch_geometry[sl][fg]) ** 2
            geometry_err += float(err.mean(-1).sum())
        pred = heads.present(tokens[:, 0]) > 0
        present_hits += int((pred == targets.present[sl].bool()).all(1).sum())
    out = {}
    if heads.geometry is not None:
        out = {"eval_geometry_mse": geometry_err / max(1, fg_total), "eval_geometry_mse_constant": constant}
    return out | {
        "eval_shape_acc": shape_hits / max(1, fg_total),
        "eval_colour_acc": colour_hits / max(1, fg_total),
        "eval_present_exact": present_hits / max(1, targets.pixels.shape[0]),
    }
