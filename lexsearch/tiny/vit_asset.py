"""The tiny preset's shipped ViT: pretrained once on a generic, label-free corpus, as DINOv2 is pretrained once.

The paper downloads DINOv2, pretrained on other data; the user's training set never shapes the backbone. The
``tiny`` preset does the same: ``scripts/pretrain_tiny_vit.py`` renders a generic corpus with its own fixed
seed (never the user's data, never an evaluated world), trains the ``TINY_VISION`` ViT on it for far longer
than a per-run budget allows, and saves it under ``lexsearch/tiny/assets/tiny_vit/`` (``save_pretrained``
folder + ``pretrain_record.json``, which holds the command).

The shipped asset learnt from images alone (:mod:`lexsearch.tiny.contours`): unnamed objects of many shape
families, colours, textures and sizes, and per patch its own object's silhouette, shape descriptors and
k-means cluster of them, and its coarse colour bin. No world's shape or colour names are used. (Until this
asset, the ViT was trained on the toy world's own shape and colour labels, ``--corpus toy``:
:func:`corpus_targets` below; it knew that world's five shapes and little else, docs/toy-results.md.)

:func:`shipped_vit_dir` says whether that asset fits a model config (same ViT config and image
preprocessing); the tiny-base pretraining then loads it instead of pretraining a ViT on the training set.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lexsearch.model.config import ModelConfig

log = logging.getLogger(__name__)

ASSET_DIR = Path(__file__).resolve().parent / "assets" / "tiny_vit"
RECORD_FILE = "pretrain_record.json"

# The corpus's own seed, far from the small seeds users and tests give generate_toy_world [choice].
CORPUS_SEED = 104729


@dataclass
class CorpusSpec:
    """Which generated images the shipped ViT was trained (and evaluated) on."""

    seed: int = CORPUS_SEED
    n_train: int = 30000
    n_eval: int = 500  # images n_train .. n_train + n_eval - 1 of the same corpus, never trained on
    # Colour and shape drawn independently (no canonical pairing), so colour never stands in for shape.
    canonical_binding: bool = False


def corpus_targets(
    indices: range, seed: int, model_config: ModelConfig, patch_size: int, canonical_binding: bool = False
):
    """VisionTargets of toy images ``indices`` of world ``seed``, rendered in memory (nothing written).

    Uses the toy world's default colours, shapes, sizes and backgrounds at the model's image size.
    """
    from PIL import Image

    from lexsearch.data.toyworld import COLOUR_WORDS, SHAPE_WORDS, ToyWorldConfig, render_scene
    from lexsearch.model.images import preprocess
    from lexsearch.tiny.vision import VisionTargets, patch_targets, pretraining_size

    toy = ToyWorldConfig(image_size=pretraining_size(model_config), canonical_binding=canonical_binding)
    shapes, colours = list(SHAPE_WORDS), list(COLOUR_WORDS)
    pixels = np.empty((len(indices), 3, toy.image_size, toy.image_size), dtype=np.float32)
    patch_shape, patch_colour, present = [], [], []
    for row, index in enumerate(indices):
        scene = render_scene(index, seed=seed, config=toy)
        pixels[row] = preprocess(
            Image.fromarray(scene.image), toy.image_size, model_config.image_mean, model_config.image_std
        )
        mask = scene.class_mask(tuple(shapes)).astype(np.int64)
        pairs = [(s.colour, s.shape) for s in scene.shapes]
        ps, pc, pr = patch_targets(mask, pairs, shapes, colours, patch_size)
        patch_shape.append(ps)
        patch_colour.append(pc)
        present.append(pr)
    return VisionTargets(
        pixels=torch.from_numpy(pixels),
        patch_shape=torch.from_numpy(np.stack(patch_shape)),
        patch_colour=torch.from_numpy(np.stack(patch_colour)),
        present=torch.from_numpy(np.stack(present)),
        shapes=shapes,
        colours=colours,
    )


def asset_fingerprint(model_config: ModelConfig) -> dict:
    """What the shipped ViT was pretrained with: its config and the image preprocessing (size, mean, std)."""
    return {
        "vision_config": dict(model_config.vision_config or {}),
        "image_size": int(model_config.image_size),
        "image_mean": [float(x) for x in model_config.image_mean],
        "image_std": [float(x) for x in model_config.image_std],
    }


def _usable_by(fingerprint: dict) -> dict:
    """The part of a fingerprint a model must share to use the ViT. Not the input size: as DINOv2, the ViT
    interpolates its position embeddings, so it runs at other sizes than it was pretrained at (the tiny
    preset feeds it 96 px images; it was pretrained at 64)."""
    return {k: v for k, v in fingerprint.items() if k != "image_size"}


def read_record(asset_dir: Path = ASSET_DIR) -> dict | None:
    """The asset's JSON record, or None when no asset is there."""
    path = Path(asset_dir) / RECORD_FILE
    if not path.is_file() or not (Path(asset_dir) / "model.safetensors").is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def shipped_vit_dir(model_config: ModelConfig, asset_dir: Path = ASSET_DIR) -> Path | None:
    """``asset_dir`` when its ViT was pretrained for this ViT config and pixel normalisation, else None."""
    record = read_record(asset_dir)
    if record is None:
        return None
    wanted = _usable_by(json.loads(json.dumps(asset_fingerprint(model_config))))
    if _usable_by(record.get("fingerprint") or {}) != wanted:
        log.info("shipped tiny ViT does not match this vision config: pretraining one instead")
        return None
    return Path(asset_dir)


def asset_digest(asset_dir: Path) -> str:
    """Hash of the asset's weights, so a re-shipped asset invalidates cached tiny bases."""
    return hashlib.sha256((Path(asset_dir) / "model.safetensors").read_bytes()).hexdigest()[:20]


def load_shipped_vit(asset_dir: Path = ASSET_DIR):
    """The shipped ViT as a float32 ``Dinov2Model`` (stored in float16 to keep the asset small)."""
    from transformers import Dinov2Model

    from lexsearch.model.checkpoint import quiet_transformers

    quiet_transformers()
    return Dinov2Model.from_pretrained(str(asset_dir), dtype=torch.float32)
