"""Where a training run's starting model comes from: a fine-tune checkpoint, the hub, or the tiny bases."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from lexsearch.train.config import TrainConfig

log = logging.getLogger(__name__)


def initial_model(config: TrainConfig, pairs, out_dir: Path, dtype: torch.dtype, is_main: bool, barrier):
    """(model, root) to start training from; ``root`` is where the checkpoint's local bases live.

    Only the main rank writes files; the others wait at ``barrier`` and then read them.
    """
    from lexsearch.model.checkpoint import build_model, load_checkpoint
    from lexsearch.model.presets import preset_config
    from lexsearch.tiny.bases import prepare_tiny_bases

    if config.init:
        return load_checkpoint(Path(config.init), dtype=dtype), Path(config.init)
    if config.preset == "tiny":
        if is_main:
            prepare_tiny_bases(out_dir, pairs, config.seed)
        barrier()
        return load_checkpoint(out_dir, dtype=dtype), out_dir
    # small / paper: base models from the hub (or a local mirror through HF_HOME); trainable parts fresh.
    torch.manual_seed(config.seed)  # the same initial adapter / Z_img / LoRA on every rank
    return build_model(preset_config(config.preset), dtype=dtype), None
