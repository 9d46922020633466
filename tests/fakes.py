"""Test doubles. ``FakeEncoder`` has the Encoder names the indexer uses, without torch.

Its vectors are deterministic functions of the pixels (a colour histogram for the sparse side, a fixed
random projection of it for the dense side), so the same image always gets the same vectors and different
images usually differ: enough to test that the index stores, moves and removes the right vectors.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.sparse import csr_matrix

BINS = 4  # per channel: 4**3 = 64 colour terms


@dataclass
class FakeEncoded:
    sparse: csr_matrix
    dense: np.ndarray | None


class FakeEncoder:
    image_size = 16
    grid = (2, 2)

    def __init__(self, dense_dim: int = 8, delay_s: float = 0.0, model_id: str = "fake-model-1"):
        self.vocab_size = BINS**3 + 4  # colour bins + brightness/contrast words
        self.dense_dim = dense_dim
        self.model_id = model_id
        self.vocab_hash = hashlib.sha1(b"fake-vocab").hexdigest()[:16]
        self.delay_s = delay_s  # per batch: makes a run long enough to be killed midway in tests
        self.calls = 0
        self.images_seen = 0
        self._proj = np.random.default_rng(0).standard_normal((self.vocab_size, max(dense_dim, 1)))

    def preprocess(self, image: Image.Image) -> np.ndarray:
        arr = np.asarray(image.convert("RGB").resize((self.image_size, self.image_size)), np.float32) / 255.0
        return np.ascontiguousarray(arr.transpose(2, 0, 1))  # (3, S, S)

    def encode_pixels(self, pixels: np.ndarray) -> FakeEncoded:
        self.calls += 1
        self.images_seen += len(pixels)
        if self.delay_s:
            time.sleep(self.delay_s)
        rows = []
        for px in np.asarray(pixels, np.float32):
            q = np.minimum((px * BINS).astype(int), BINS - 1)  # (3, S, S) bin per channel
            codes = (q[0] * BINS + q[1]) * BINS + q[2]
            hist = np.bincount(codes.ravel(), minlength=BINS**3).astype(np.float32)
            top = px[:, : px.shape[1] // 2].mean()
            extra = np.array([px.mean(), px.std(), top, px[0].mean()], np.float32)
            v = np.concatenate([hist / hist.sum(), extra])
            v /= np.linalg.norm(v) or 1.0
            v[v < 0.05] = 0.0  # sparsify, like the real threshold
            rows.append(v)
        dense_rows = np.stack(rows)
        dense = None
        if self.dense_dim:
            dense = (dense_rows @ self._proj).astype(np.float32)
            dense /= np.linalg.norm(dense, axis=1, keepdims=True) + 1e-9
        return FakeEncoded(csr_matrix(dense_rows), dense)

    def words(self, term_ids) -> list[str]:
        return [f"w{int(t)}" for t in term_ids]


def make_image(path, seed: int, size: tuple[int, int] = (40, 30), fmt: str | None = None) -> None:
    """Write a small deterministic image (blocks of random colour) so different seeds embed differently."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    arr = np.kron(blocks, np.ones((size[1] // 3 + 1, size[0] // 4 + 1, 1), np.uint8))[: size[1], : size[0]]
    Image.fromarray(arr).save(path, format=fmt)


def make_images(folder, n: int, start: int = 0, ext: str = ".png") -> list:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        p = folder / f"img_{i:05d}{ext}"
        make_image(p, i)
        paths.append(p)
    return paths
