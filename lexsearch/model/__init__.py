"""The LexVLA model: module, vocabulary, presets, checkpoints and the ``Encoder`` facade.

Importing this package imports torch; the CLI imports it only inside command bodies.
"""

from lexsearch.model.checkpoint import build_model, load_checkpoint, read_config, save_checkpoint
from lexsearch.model.config import ModelConfig
from lexsearch.model.encoder import Encoded, Encoder, pick_device
from lexsearch.model.lexvla import LexVLA
from lexsearch.model.presets import PRESETS, preset_config
from lexsearch.model.tiny import build_tiny_checkpoint

__all__ = [
    "PRESETS", "Encoded", "Encoder", "LexVLA", "ModelConfig", "build_model", "build_tiny_checkpoint",
    "load_checkpoint", "pick_device", "preset_config", "read_config", "save_checkpoint",
]
