"""Where a training run's starting model comes from: a fine-tune checkpoint, the hub, or tiny bases.

:func:`prepare_tiny_bases` is the single hook for the tiny preset's base models: the ViT is the shipped one
(``lexsearch/model/assets/tiny_vit``, pretrained once on a generic toy corpus, as DINOv2 is downloaded) when
it fits the vision config, else pretrained on the training images; the tiny LM is pretrained per training
set (its tokenizer is built from the captions). Both are cached under LEXSEARCH_HOME
(``lexsearch/train/pretrain.py``). Shard streams keep random bases.
"""

from __future__ import annotations

import logging
from itertools import islice
from pathlib import Path

import torch

from lexsearch.train.config import TrainConfig

log = logging.getLogger(__name__)

MAX_TOKENIZER_CAPTIONS = 200_000  # enough text to train a small BPE vocabulary; shards are not read further


def training_captions(pairs) -> list[str]:
    """Captions to build the tiny tokenizer from (all of a folder's; the first ones of a shard stream)."""
    if hasattr(pairs, "captions"):
        return list(pairs.captions)
    return [p.caption for p in islice(iter(pairs), MAX_TOKENIZER_CAPTIONS)]


def prepare_tiny_bases(out_dir: Path, pairs, config: TrainConfig) -> Path:
    """Write an untrained ``tiny`` LexVLA checkpoint (with its base models under ``base/``) into ``out_dir``.

    ``pairs`` are the training pairs (images and captions). A folder source gets pretrained bases
    (:mod:`lexsearch.train.pretrain`, cached under LEXSEARCH_HOME); shard streams keep random bases.
    """
    from lexsearch.model.tiny import build_tiny_checkpoint

    source = Path(getattr(pairs, "source", ""))
    if hasattr(pairs, "images") and source.is_dir():
        from lexsearch.train.pretrain import PretrainConfig, write_pretrained_checkpoint

        return write_pretrained_checkpoint(
            Path(out_dir), source, list(pairs.captions), list(pairs.images), PretrainConfig(seed=config.seed)
        )
    return build_tiny_checkpoint(Path(out_dir), training_captions(pairs), seed=config.seed)


def initial_model(config: TrainConfig, pairs, out_dir: Path, dtype: torch.dtype, is_main: bool, barrier):
    """(model, root) to start training from; ``root`` is where the checkpoint's local bases live.

    Only the main rank writes files; the others wait at ``barrier`` and then read them.
    """
    from lexsearch.model.checkpoint import build_model, load_checkpoint
    from lexsearch.model.presets import preset_config

    if config.init:
        return load_checkpoint(Path(config.init), dtype=dtype), Path(config.init)
    if config.preset == "tiny":
        if is_main:
            prepare_tiny_bases(out_dir, pairs, config)
        barrier()
        return load_checkpoint(out_dir, dtype=dtype), out_dir
    # small / paper: base models from the hub (or a local mirror through HF_HOME); trainable parts fresh.
    torch.manual_seed(config.seed)  # the same initial adapter / Z_img / LoRA on every rank
    return build_model(preset_config(config.preset), dtype=dtype), None
