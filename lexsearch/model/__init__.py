"""The LexVLA model: module, vocabulary, presets, checkpoints and the ``Encoder`` facade.

Names are imported on first use, so ``lexsearch.model.lazy`` and ``lexsearch.model.vocab`` stay free of torch
(a cached query never loads it).
"""

from __future__ import annotations

from lexsearch.exports import lazy_exports

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


__getattr__ = lazy_exports(__name__, {name: f"lexsearch.model.{module}" for name, module in _EXPORTS.items()})
