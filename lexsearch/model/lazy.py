"""``LazyEncoder``: a model's vocabulary at once, its networks only when something must be encoded.

A query answered from the collection's query cache needs the vocabulary (words for explanations, pieces for
``+``/``-`` operators) but not the networks; loading those (torch, transformers, the weights) is what makes a
cold query slow. Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

from lexsearch.model.config import fingerprint, read_config, tokenizer_source
from lexsearch.model.vocab import Vocabulary


class LazyEncoder:
    """Has the ``Encoder`` interface (docs/INTERFACES.md); loads the real Encoder on first use of the networks."""

    def __init__(self, model_dir: str | Path, device: str = "auto") -> None:
        self.model_dir = Path(model_dir)
        self.device_name = device
        self.config = read_config(self.model_dir)
        self.model_id = fingerprint(self.model_dir)
        self.vocab = Vocabulary.load(tokenizer_source(self.config, self.model_dir), self.config.vocab_ids)
        self.vocab_hash = self.vocab.hash
        self.vocab_size = len(self.vocab)
        self.dense_dim = self.config.dense_dim
        self.image_size = self.config.image_size
        self._encoder = None

    @property
    def loaded(self) -> bool:
        return self._encoder is not None

    def words(self, term_ids) -> list[str]:
        return [self.vocab.words[int(t)] for t in term_ids]

    def word_terms(self, word: str) -> list[int]:
        return self.vocab.word_terms(word)

    def decode(self, row, top_k: int = 10) -> list[tuple[str, float]]:
        return self.vocab.decode(row, top_k)

    # What needs the networks; anything else missing is a plain AttributeError (no accidental load).
    _NETWORK = frozenset(
        {
            "encode_texts",
            "encode_images",
            "encode_pixels",
            "encode_words",
            "encode_patches",
            "preprocess",
            "grid",
            "model",
            "device",
        }
    )

    def __getattr__(self, name: str):
        if name not in LazyEncoder._NETWORK:
            raise AttributeError(name)
        if self._encoder is None:
            from lexsearch.model.encoder import Encoder

            self._encoder = Encoder.load(self.model_dir, device=self.device_name)
        return getattr(self._encoder, name)
