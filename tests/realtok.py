"""The real-tokenizer stand-in: Mistral-7B v0.1's SentencePiece model (32,000 pieces, Llama-2 family),
shipped inside the ``mistral-common`` wheel (a test extra), loaded as the ``paper`` preset loads Llama 2's.

``real_tokenizer()`` is that model as ``transformers.LlamaTokenizer`` converts it; ``hub_style_tokenizer()``
is the same vocabulary with the normaliser of Llama 2's hub ``tokenizer.json`` (``▁`` prepended, spaces
replaced), which writes " horse" as ``▁`` + ``▁horse``. ``real_checkpoint(dir)`` is a loadable checkpoint of
tiny widths over the real 32,000-piece vocabulary.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest

# Tiny widths, the real vocabulary: a fast model with the real tokenisation.
TINY_VISION = dict(
    image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2
)
TINY_LM = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)


def model_file() -> Path:
    mistral_common = pytest.importorskip("mistral_common")
    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not path.is_file():
        pytest.skip(f"{path} missing from the installed mistral-common")
    return path


@functools.cache
def _tokenizer():
    from lexsearch.model.architectures import load_sentencepiece_tokenizer

    return load_sentencepiece_tokenizer(model_file())


def real_tokenizer():
    pytest.importorskip("sentencepiece")
    return copy.deepcopy(_tokenizer())


def hub_style_tokenizer():
    from tokenizers import normalizers

    tok = real_tokenizer()
    backend = tok.backend_tokenizer
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    backend.pre_tokenizer = None
    return tok


def real_checkpoint(out_dir: Path, tokenizer=None, **overrides) -> Path:
    from lexsearch.model.architectures import write_random_checkpoint
    from lexsearch.model.presets import preset_config

    config = preset_config(
        "paper", adapter_heads=2, adapter_hidden=64, lora_r=2, max_text_tokens=32, dense_dim=8, **overrides
    )
    return write_random_checkpoint(out_dir, config, tokenizer or real_tokenizer(), TINY_VISION, TINY_LM)
