"""The LexVLA model: module, vocabulary, presets, checkpoints and the ``Encoder`` facade.

Names are imported on first use, so ``lexsearch.model.lazy`` and ``lexsearch.model.vocab`` stay free of torch
(a cached query never loads it).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "build_model": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "ModelConfig": "config",
    "read_config": "config",
    "fingerprint": "config",
    "Encoded": "encoder",
    "Encoder": "encoder",
    "pick_device": "encoder",
    "LazyEncoder": "lazy",
    "LexVLA": "lexvla",
    "PRESETS": "presets",
    "preset_config": "presets",
    "Vocabulary": "vocab",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"lexsearch.model.{_EXPORTS[name]}"), name)
