"""The ``Encoder`` facade: images and texts in, sparse lexical vectors (scipy CSR) and dense vectors out.

This is what indexing, search, explain and eval use; none of them touches the torch module directly.

    enc = Encoder.load("models/toy")
    out = enc.encode_texts(["a red circle"])       # Encoded(sparse=csr (1, V), dense=(1, D) or None)
    enc.decode(out.sparse[0], top_k=5)              # [("red", 0.61), ("circle", 0.55), ...]
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from PIL import Image

from lexsearch.errors import UsageError
from lexsearch.model.checkpoint import load_checkpoint
from lexsearch.model.config import fingerprint
from lexsearch.model.images import open_image, preprocess
from lexsearch.model.lexvla import LexVLA
from lexsearch.model.vectors import Encoded, parse_sparsify, threshold
from lexsearch.model.vocab import Vocabulary

log = logging.getLogger(__name__)


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` = CUDA if available, else Apple MPS, else CPU; an explicit device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but CUDA is not available on this machine")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps was asked for, but MPS is not available on this machine")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise UsageError(f"unknown device {name!r} (use auto, cpu, cuda or mps)")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (the paper trains in bf16); full precision elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sparsify_vectors(vectors: torch.Tensor, mode: str, k: int, cut: float | None = None) -> sp.csr_matrix:
    """(n, V) non-negative vectors -> CSR keeping entries above ``vectors.threshold`` (1/sqrt(V) [paper], or
    the model's own ``cut``), the top k, or all."""
    vectors = vectors.float()
    n, vocab = vectors.shape
    if mode == "threshold":
        kept = torch.where(vectors > threshold(vocab, cut), vectors, torch.zeros_like(vectors))
    elif mode == "topk":
        values, idx = vectors.topk(min(k, vocab), dim=1)
        kept = torch.zeros_like(vectors).scatter_(1, idx, values)
    else:
        kept = vectors
    return sp.csr_matrix(kept.cpu().numpy(), dtype=np.float32)


class Encoder:
    """A loaded LexVLA model ready for inference on one device (see docs/INTERFACES.md)."""

    def __init__(
        self, model: LexVLA, device: torch.device, model_id: str = "", model_dir: Path | None = None
    ):
        self.model = model.to(device).eval()
        self.device = device
        self.config = model.config
        self.model_id = model_id
        self.model_dir = model_dir
        self.vocab_size = model.vocab_size
        self.dense_dim = model.config.dense_dim
        self.image_size = model.config.image_size
        side = self.image_size // model.patch_size
        self.grid = (side, side)
        self.vocab = Vocabulary(model.tokenizer.backend_tokenizer, model.config.vocab_ids)
        self.vocab_hash = self.vocab.hash

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "auto") -> Encoder:
        """Load a checkpoint folder (see :mod:`lexsearch.model.checkpoint`) onto ``device``."""
        dev = pick_device(device)
        # Frozen bases in bf16 on CUDA halve memory (a 7B LM); trainable parts stay float32.
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
        model = load_checkpoint(Path(model_dir), dtype=dtype)
        for module in (model.adapter, model.dense_img, model.dense_txt):
            if module is not None:
                module.float()
        return cls(model, dev, model_id=fingerprint(Path(model_dir)), model_dir=Path(model_dir))

    # ---------------------------------------------------------------------------------------- images
    def preprocess(self, image: Image.Image) -> np.ndarray:
        """(3, S, S) float32 model input; thread-safe, no torch state (run it in decoder threads)."""
        return preprocess(image, self.image_size, self.config.image_mean, self.config.image_std)

    def _load(self, image: Image.Image | str | Path) -> Image.Image:
        return image if isinstance(image, Image.Image) else open_image(image)

    @torch.inference_mode()
    def encode_pixels(self, pixels: np.ndarray, sparsify_mode: str | tuple | None = None) -> Encoded:
        """The model forward on a ready batch (B, 3, S, S)."""
        mode, k = parse_sparsify(sparsify_mode, self.config.sparsify, self.config.top_k)
        with autocast(self.device):
            s_img, dense = self.model.encode_image(torch.from_numpy(np.asarray(pixels)).to(self.device))
        return Encoded(sparsify_vectors(s_img, mode, k, self.config.threshold), _numpy(dense))

    def encode_images(
        self,
        images: Sequence[Image.Image | str | Path],
        batch_size: int = 32,
        sparsify: str | tuple | None = None,
    ) -> Encoded:
        parts = []
        for start in range(0, len(images), batch_size):
            batch = np.stack([self.preprocess(self._load(im)) for im in images[start : start + batch_size]])
            parts.append(self.encode_pixels(batch, sparsify))
        return _concat(parts, self.vocab_size)

    @torch.inference_mode()
    def encode_patches(self, image: Image.Image | str | Path) -> np.ndarray:
        """Patch-level vectors (h*w, V) float32, L2-normalised, in row-major grid order (not sparsified)."""
        pixels = torch.from_numpy(self.preprocess(self._load(image))[None]).to(self.device)
        with autocast(self.device):
            patches = self.model.patch_vectors(pixels)[0]
        return patches.float().cpu().numpy()

    @torch.inference_mode()
    def word_margins(self, images: Sequence[Image.Image | str | Path], batch_size: int = 32) -> np.ndarray:
        """How far each image's strongest word stands out (n,) (``LexVLA.word_margin``)."""
        out = []
        for start in range(0, len(images), batch_size):
            batch = np.stack([self.preprocess(self._load(im)) for im in images[start : start + batch_size]])
            with autocast(self.device):
                out.append(self.model.word_margin(torch.from_numpy(batch).to(self.device)).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    # ----------------------------------------------------------------------------------------- texts
    @torch.inference_mode()
    def encode_texts(
        self, texts: Sequence[str], batch_size: int = 32, sparsify: str | tuple | None = None
    ) -> Encoded:
        mode, k = parse_sparsify(sparsify, self.config.sparsify, self.config.top_k)
        parts = []
        for start in range(0, len(texts), batch_size):
            ids, mask = self.model.tokenize(list(texts[start : start + batch_size]))
            with autocast(self.device):
                s_txt, dense = self.model.encode_text(ids.to(self.device), mask.to(self.device))
            parts.append(Encoded(sparsify_vectors(s_txt, mode, k, self.config.threshold), _numpy(dense)))
        return _concat(parts, self.vocab_size)

    @torch.inference_mode()
    def encode_words(self, words: Sequence[str], sparsify: str | tuple | None = None) -> Encoded:
        """Word-level vectors (class names for PatchDis): a word that is one vocabulary piece uses its LM-head
        row [paper]; a multi-piece word goes through the prompt path [choice]."""
        mode, k = parse_sparsify(sparsify, self.config.sparsify, self.config.top_k)
        rows = []
        for word in words:
            cols = self.word_terms(word)
            # pieces() already leaves out a bare word-start marker: "horse" is one piece even where the
            # tokenizer writes " horse" as "▁" + "▁horse".
            with autocast(self.device):  # the same precision as encode_texts, so the two paths compare
                if len(cols) == 1 and len(self.vocab.pieces(word)) == 1:
                    rows.append(self.model.word_vectors(torch.tensor(cols, device=self.device))[0])
                else:
                    ids, mask = self.model.tokenize([word])
                    rows.append(self.model.encode_text(ids.to(self.device), mask.to(self.device))[0][0])
        return Encoded(sparsify_vectors(torch.stack(rows), mode, k, self.config.threshold), None)

    # ------------------------------------------------------------------------------------ vocabulary
    def words(self, term_ids: Sequence[int] | np.ndarray) -> list[str]:
        """Readable words of vocabulary columns (continuation pieces shown as ``##piece``)."""
        return [self.vocab.words[int(t)] for t in term_ids]

    def word_terms(self, word: str) -> list[int]:
        """Vocabulary columns of a query word's pieces (for +must / -exclude operators); [] if none is kept."""
        return self.vocab.word_terms(word)

    def decode(self, row, top_k: int = 10) -> list[tuple[str, float]]:
        """The ``top_k`` strongest words of one vector (CSR row or 1-d array), strongest first."""
        return self.vocab.decode(row, top_k)


def _numpy(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.float().cpu().numpy()


def _concat(parts: list[Encoded], vocab: int) -> Encoded:
    if not parts:
        return Encoded(sp.csr_matrix((0, vocab), dtype=np.float32), None)
    sparse = sp.vstack([p.sparse for p in parts], format="csr").astype(np.float32)
    dense = None if parts[0].dense is None else np.concatenate([p.dense for p in parts])
    return Encoded(sparse, dense)
