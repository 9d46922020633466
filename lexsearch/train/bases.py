"""Where a training run's starting model comes from: a fine-tune checkpoint, the hub, or the tiny bases."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from lexsearch.train.config import TrainConfig

log = logging.getLogger(__name__)


def initial_model(
    config: TrainConfig,
    pairs,
    out_dir: Path,
    dtype: torch.dtype,
    is_main: bool,
    barrier,
    deadline: float | None = None,
):
    """(model, root) to start training from; ``root`` is where the checkpoint's local bases live.

    Only the main rank writes files (the tiny preset's bases, under ``out_dir/base``); the others wait at
    ``barrier`` and then read them. Nothing that looks like a model is written: ``out_dir`` holds one only
    from the run's first checkpoint on. ``deadline`` (``time.monotonic()``) bounds the tiny bases' pretraining.
    """
    from lexsearch.model.checkpoint import build_model, load_checkpoint
    from lexsearch.model.presets import preset_config
    from lexsearch.tiny.bases import prepare_tiny_bases, untrained_tiny_model

    if config.init:
        return load_checkpoint(Path(config.init), dtype=dtype), Path(config.init)
    if config.preset == "tiny":
        if is_main:
            prepare_tiny_bases(out_dir, pairs, config.seed, deadline)
        barrier()
        return untrained_tiny_model(out_dir, config.seed, dtype), out_dir
    # small / paper: base models from the hub (or a local mirror through HF_HOME); trainable parts fresh.
    torch.manual_seed(config.seed)  # the same initial adapter / Z_img / LoRA on every rank
    return build_model(preset_config(config.preset), dtype=dtype), None
