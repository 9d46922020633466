"""What encoders return, and the sparsification settings, without torch (shared by the LM and the student)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from lexsearch.errors import UsageError


@dataclass
class Encoded:
    sparse: sp.csr_matrix  # (n, V) float32, non-negative, sparsified
    dense: np.ndarray | None  # (n, D) float32, L2-normalised; None when the model has no dense head


def parse_sparsify(mode: str | tuple | None, default: str, default_k: int) -> tuple[str, int]:
    """``threshold`` | ``none`` | ``topk`` | ``topk:K`` | ("topk", K) -> (mode, k)."""
    mode = default if mode is None else mode
    if isinstance(mode, tuple):
        return str(mode[0]), int(mode[1])
    if mode.startswith("topk"):
        _, _, k = mode.partition(":")
        try:
            return "topk", int(k) if k else default_k
        except ValueError:
            raise UsageError(f"bad sparsification {mode!r}: use topk:K with an integer K") from None
    if mode not in ("threshold", "none"):
        raise UsageError(f"bad sparsification {mode!r}: use threshold, topk:K or none")
    return mode, default_k


def threshold(vocab: int, cut: float | None = None) -> float:
    """The threshold rule's cut-off: the model's own (``ModelConfig.threshold``) when it records one, else
    1/sqrt(V) [paper]."""
    return float(cut) if cut else 1.0 / math.sqrt(vocab)


def sparsify_array(vectors: np.ndarray, mode: str, k: int, cut: float | None = None) -> sp.csr_matrix:
    """(n, V) non-negative float32 vectors -> CSR keeping entries above :func:`threshold` [paper], the top
    k, or all.

    The numpy twin of ``lexsearch.model.encoder.sparsify_vectors`` (same rule, no torch)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    n, vocab = vectors.shape
    if mode == "threshold":
        kept = np.where(vectors > threshold(vocab, cut), vectors, 0.0).astype(np.float32)
    elif mode == "topk" and k < vocab:
        idx = np.argpartition(-vectors, k - 1, axis=1)[:, :k]
        kept = np.zeros_like(vectors)
        np.put_along_axis(kept, idx, np.take_along_axis(vectors, idx, axis=1), axis=1)
    else:
        kept = vectors
    return sp.csr_matrix(kept, dtype=np.float32)
