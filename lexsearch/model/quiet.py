"""Keep transformers' own chatter off stderr: lexsearch reports its own progress (a leaf module, so every
loader, the GGUF conversion included, can call it without importing the checkpoint code)."""

from __future__ import annotations


def quiet_transformers() -> None:
    """No per-shard progress bars or advice on stderr: lexsearch reports its own progress."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
