"""Zero-shot retrieval R@1/5/10 in both directions, as in LexVLA's evaluation (CLIP's protocol).

Scores are a (texts x images) matrix; an image usually has several captions (MSCOCO 5K images / 25K
captions, Flickr30K 1K / 5K). Text-to-image: a caption hits at K when its own image is among the top K
images. Image-to-text: an image hits at K when *any* of its captions is among the top K captions.

Everything is computed in blocks of queries, so the full 25k x 5k matrix never has to exist at once.

Ties are broken *against* the query (pessimistic): a correct item is in the top K only when fewer than K
wrong candidates score at least as high as the best correct one. Sparse vectors make exact ties common
(a caption that shares no word with any image scores 0 everywhere); any optimistic or index-order tie
breaking would reward a model that outputs nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from lexsearch.errors import DataError, ModelError, UsageError

log = logging.getLogger(__name__)

KS = (1, 5, 10)
# A block of 512 queries against 25k candidates is ~50 MB of float32 scores plus a bool mask: small enough
# for a laptop, large enough that the per-block Python overhead is negligible.
CHUNK_SIZE = 512
# The top-k values of the sparsity sweep (the paper's figure goes up to its Q(512) point and beyond); values
# at or above the vocabulary size collapse into one "all dims" point.
SWEEP_KS = (4, 8, 16, 32, 64, 128, 256, 512, 1024)

# A progress wrapper the CLI may inject (tqdm); the core itself never draws anything.
Progress = Callable[[Iterable[Any], int, str], Iterable[Any]]


def _no_progress(it: Iterable[Any], total: int, desc: str) -> Iterable[Any]:
    return it


# --------------------------------------------------------------------------------------------- sparsify


@dataclass(frozen=True)
class Sparsify:
    """Inference sparsification: ``threshold`` (> 1/sqrt(V), the paper's default), ``topk`` or ``none``."""

    mode: str
    k: int | None = None

    @classmethod
    def parse(cls, text: str) -> Sparsify:
        """Parse ``threshold``, ``none`` or ``topk:K`` (K a positive integer)."""
        t = text.strip().lower()
        if t in ("threshold", "none"):
            return cls(t)
        if t.startswith("topk:"):
            try:
                k = int(t[5:])
            except ValueError:
                k = 0
            if k > 0:
                return cls("topk", k)
        raise UsageError(f"Bad sparsify value {text!r}: use 'threshold', 'none' or 'topk:K' with K > 0.")

    def encoder_arg(self) -> str | tuple[str, int]:
        """The value of the Encoder's ``sparsify=`` keyword for this setting."""
        return ("topk", int(self.k)) if self.mode == "topk" else self.mode  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"topk:{self.k}" if self.mode == "topk" else self.mode

    def apply(self, mat: sp.spmatrix | np.ndarray) -> sp.csr_matrix:
        """Sparsify raw (or less sparse) row vectors; values are *not* renormalised, as in the encoder."""
        csr = sp.csr_matrix(mat, dtype=np.float32)
        csr.eliminate_zeros()
        if self.mode == "none":
            return csr
        if self.mode == "threshold":
            out = csr.copy()
            out.data[out.data <= 1.0 / np.sqrt(csr.shape[1])] = 0.0
            out.eliminate_zeros()
            return out
        return topk_rows(csr, int(self.k))  # type: ignore[arg-type]


def topk_rows(csr: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the k largest entries of every row (all of them when a row has fewer)."""
    csr = sp.csr_matrix(csr, dtype=np.float32)
    counts = np.diff(csr.indptr)
    if counts.max(initial=0) <= k:
        return csr.copy()
    keep = np.zeros(csr.nnz, dtype=bool)
    for r in np.flatnonzero(counts):
        a, b = csr.indptr[r], csr.indptr[r + 1]
        if b - a <= k:
            keep[a:b] = True
        else:
            # argpartition: O(nnz) per row instead of a full sort.
            keep[a + np.argpartition(-csr.data[a:b], k - 1)[:k]] = True
    rows = np.repeat(np.arange(csr.shape[0]), counts)[keep]
    return sp.csr_matrix((csr.data[keep], (rows, csr.indices[keep])), shape=csr.shape, dtype=np.float32)


def active_dims(mat: sp.spmatrix | np.ndarray) -> float:
    """Average number of non-zero dimensions per row."""
    if mat.shape[0] == 0:
        return 0.0
    if sp.issparse(mat):
        csr = sp.csr_matrix(mat)
        return float(np.count_nonzero(csr.data) / csr.shape[0])
    return float(np.count_nonzero(np.asarray(mat)) / mat.shape[0])


# ------------------------------------------------------------------------------------------------ R@K


@dataclass
class Recall:
    """Recall@K in percent, both directions."""

    t2i: dict[int, float]
    i2t: dict[int, float]
    n_texts: int
    n_images: int
    # Images that have no caption cannot be image-to-text queries; they stay text-to-image candidates.
    n_images_without_caption: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "t2i": {f"R@{k}": v for k, v in self.t2i.items()},
            "i2t": {f"R@{k}": v for k, v in self.i2t.items()},
            "n_texts": self.n_texts,
            "n_images": self.n_images,
            "n_images_without_caption": self.n_images_without_caption,
        }


def _wrong_at_least_best(block: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query row: how many wrong candidates score >= the best correct one, and whether it has one."""
    block = np.asarray(block, dtype=np.float32)
    has = correct.any(axis=1)
    best = np.where(correct, block, -np.inf).max(axis=1)
    n_wrong = ((block >= best[:, None]) & ~correct).sum(axis=1)
    return n_wrong, has


def _check_text_image(text_image: Sequence[int] | np.ndarray, n_texts: int, n_images: int) -> np.ndarray:
    ti = np.asarray(text_image, dtype=np.int64).reshape(-1)
    if ti.shape[0] != n_texts:
        raise UsageError(f"text_image has {ti.shape[0]} entries for {n_texts} texts.")
    if n_texts and (ti.min() < 0 or ti.max() >= n_images):
        raise UsageError(f"text_image holds image indices outside 0..{n_images - 1}.")
    return ti


def _recall_blocks(
    t2i_block: Callable[[int, int], np.ndarray],
    i2t_block: Callable[[int, int], np.ndarray],
    text_image: np.ndarray,
    n_images: int,
    ks: Sequence[int],
    chunk_size: int,
    progress: Progress,
) -> Recall:
    n_texts = text_image.shape[0]
    if n_texts == 0 or n_images == 0:
        raise UsageError("Retrieval needs at least one text and one image.")
    chunk_size = max(1, int(chunk_size))
    ks = tuple(sorted(set(int(k) for k in ks)))

    # Text -> image: exactly one correct image per caption.
    t2i_wrong = np.empty(n_texts, dtype=np.int64)
    starts = range(0, n_texts, chunk_size)
    for a in progress(starts, len(starts), "text->image"):
        b = min(a + chunk_size, n_texts)
        correct = np.zeros((b - a, n_images), dtype=bool)
        correct[np.arange(b - a), text_image[a:b]] = True
        t2i_wrong[a:b], _ = _wrong_at_least_best(t2i_block(a, b), correct)

    # Image -> text: every caption of the image is correct; the best one decides.
    i2t_wrong = np.empty(n_images, dtype=np.int64)
    i2t_has = np.empty(n_images, dtype=bool)
    starts = range(0, n_images, chunk_size)
    for a in progress(starts, len(starts), "image->text"):
        b = min(a + chunk_size, n_images)
        sel = np.flatnonzero((text_image >= a) & (text_image < b))
        correct = np.zeros((b - a, n_texts), dtype=bool)
        correct[text_image[sel] - a, sel] = True
        i2t_wrong[a:b], i2t_has[a:b] = _wrong_at_least_best(i2t_block(a, b), correct)

    n_no_caption = int((~i2t_has).sum())
    if n_no_caption:
        log.warning("%d image(s) have no caption: left out of image->text queries", n_no_caption)
    i2t_q = i2t_wrong[i2t_has]
    return Recall(
        t2i={k: float(100.0 * np.mean(t2i_wrong < k)) for k in ks},
        i2t={k: float(100.0 * np.mean(i2t_q < k)) if i2t_q.size else float("nan") for k in ks},
        n_texts=n_texts,
        n_images=n_images,
        n_images_without_caption=n_no_caption,
    )


def recall_at_k(
    scores: np.ndarray,
    text_image: Sequence[int] | np.ndarray,
    ks: Sequence[int] = KS,
    chunk_size: int = CHUNK_SIZE,
    progress: Progress = _no_progress,
) -> Recall:
    """R@K both ways from a full score matrix ``scores[t, i]`` (texts x images).

    ``text_image[t]`` is the index of caption t's image. Returns percentages.
    """
    s = np.asarray(scores)
    if s.ndim != 2:
        raise UsageError(f"scores must be a 2-d (texts x images) matrix, got shape {s.shape}.")
    ti = _check_text_image(text_image, s.shape[0], s.shape[1])
    return _recall_blocks(
        lambda a, b: s[a:b], lambda a, b: s[:, a:b].T, ti, s.shape[1], ks, chunk_size, progress
    )


def _as_matrix(x: sp.spmatrix | np.ndarray) -> sp.csr_matrix | np.ndarray:
    return sp.csr_matrix(x, dtype=np.float32) if sp.issparse(x) else np.asarray(x, dtype=np.float32)


def _dense(x: Any) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def recall_from_vectors(
    text_vecs: sp.spmatrix | np.ndarray,
    image_vecs: sp.spmatrix | np.ndarray,
    text_image: Sequence[int] | np.ndarray,
    ks: Sequence[int] = KS,
    chunk_size: int = CHUNK_SIZE,
    progress: Progress = _no_progress,
) -> Recall:
    """R@K both ways with scores = text_vecs @ image_vecs.T, computed block by block (CSR or dense rows)."""
    t, im = _as_matrix(text_vecs), _as_matrix(image_vecs)
    if t.shape[1] != im.shape[1]:
        raise UsageError(f"Text vectors have {t.shape[1]} dims, image vectors {im.shape[1]}.")
    ti = _check_text_image(text_image, t.shape[0], im.shape[0])
    t_T, im_T = t.T, im.T
    if sp.issparse(t):
        # Transposes as CSC->CSR once, so each block product is CSR @ CSR (scipy's fast path).
        t_T, im_T = sp.csr_matrix(t_T), sp.csr_matrix(im_T)
    return _recall_blocks(
        lambda a, b: _dense(t[a:b] @ im_T),
        lambda a, b: _dense(im[a:b] @ t_T),
        ti,
        im.shape[0],
        ks,
        chunk_size,
        progress,
    )


# ---------------------------------------------------------------------------------- sweep and the report


@dataclass
class SweepPoint:
    """One top-k setting of the sparsity sweep."""

    k: int
    active_dims_images: float
    active_dims_texts: float
    recall: Recall

    @property
    def active_dims(self) -> float:
        # The x axis of the sparsity figure: mean of the two sides (equal to k when both have >= k dims).
        return (self.active_dims_images + self.active_dims_texts) / 2.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "active_dims_images": self.active_dims_images,
            "active_dims_texts": self.active_dims_texts,
            **self.recall.to_dict(),
        }


@dataclass
class RetrievalReport:
    """What ``lexsearch eval retrieval`` reports."""

    recall: Recall
    sparsify: str
    active_dims_images: float
    active_dims_texts: float
    vocab_size: int
    dataset: str = ""
    sweep: list[SweepPoint] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("recall", "sweep")}
        d.update(self.recall.to_dict())
        d["sweep"] = [p.to_dict() for p in self.sweep]
        return d


def default_sweep_ks(vocab_size: int) -> list[int]:
    """Top-k values for the sweep: SWEEP_KS below V, plus V itself (all dims) when V is small."""
    ks = [k for k in SWEEP_KS if k < vocab_size]
    if vocab_size <= SWEEP_KS[-1]:
        ks.append(vocab_size)
    return ks


def sparsity_sweep(
    text_vecs: sp.spmatrix | np.ndarray,
    image_vecs: sp.spmatrix | np.ndarray,
    text_image: Sequence[int] | np.ndarray,
    ks: Sequence[int],
    chunk_size: int = CHUNK_SIZE,
    progress: Progress = _no_progress,
) -> list[SweepPoint]:
    """R@K for each top-k applied to both sides' vectors.

    The vectors must hold at least max(ks) dims per row (raw vectors, or top-max(ks)): top-k of top-K is
    exactly top-k for k <= K, so one encoding pass serves the whole sweep.
    """
    points = []
    for k in sorted(set(int(k) for k in ks)):
        t, im = topk_rows(sp.csr_matrix(text_vecs), k), topk_rows(sp.csr_matrix(image_vecs), k)
        rec = recall_from_vectors(t, im, text_image, chunk_size=chunk_size, progress=progress)
        points.append(SweepPoint(k, active_dims(im), active_dims(t), rec))
        log.info(
            "sweep top-%d: t2i R@1 %.1f, i2t R@1 %.1f", k, rec.t2i.get(1, np.nan), rec.i2t.get(1, np.nan)
        )
    return points


def plot_sweep(
    points: Sequence[SweepPoint], out: str | Path, reference: RetrievalReport | None = None
) -> Path:
    """Write the sparsity figure: R@1 (both directions) against the average number of active dims.

    ``reference`` (e.g. the threshold run) is drawn as separate markers so the default sits on the curve.
    """
    if not points:
        raise UsageError("The sparsity sweep has no points to plot.")
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, works on headless machines and in CI
    import matplotlib.pyplot as plt

    out = Path(out)
    if out.parent and not out.parent.exists():
        raise UsageError(f"Folder for the plot does not exist: {out.parent}")
    xs = [p.active_dims for p in points]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    try:
        for key, label, marker in (("i2t", "image→text R@1", "o"), ("t2i", "text→image R@1", "s")):
            ys = [getattr(p.recall, key).get(1, np.nan) for p in points]
            line = ax.plot(xs, ys, marker=marker, label=label)[0]
            for p, x, y in zip(points, xs, ys, strict=True):
                if key != "i2t":
                    break  # label each k once, on the first curve
                ax.annotate(f"k={p.k}", (x, y), textcoords="offset points", xytext=(3, 4), fontsize=7)
            if reference is not None:
                rx = (reference.active_dims_images + reference.active_dims_texts) / 2.0
                ry = getattr(reference.recall, key).get(1, np.nan)
                ax.plot(
                    [rx],
                    [ry],
                    marker="*",
                    markersize=12,
                    color=line.get_color(),
                    linestyle="none",
                    label=f"{label} ({reference.sparsify})",
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("active dims (average of image and text vectors)")
        ax.set_ylabel("R@1 (%)")
        ax.set_title("Retrieval vs. sparsity (top-k sweep)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out, format="png")
    finally:
        plt.close(fig)
    return out


# --------------------------------------------------------------------------------------- with a model


def _encode(
    encoder: Any, method: str, items: list[Any], sparsify: Sparsify, batch_size: int
) -> sp.csr_matrix:
    import inspect

    fn = getattr(encoder, method)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "sparsify" in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
        # Always explicit: a checkpoint's own default may be top-k rather than the paper's threshold.
        enc = fn(items, batch_size=batch_size, sparsify=sparsify.encoder_arg())
    elif sparsify.mode == "threshold":
        enc = fn(items, batch_size=batch_size)  # an Encoder without the keyword thresholds (INTERFACES.md)
    else:
        raise ModelError(
            f"This model's Encoder.{method} has no 'sparsify' option, so --sparsify {sparsify} and the "
            "sparsity sweep cannot run; use --sparsify threshold without --plot."
        )
    return sp.csr_matrix(enc.sparse, dtype=np.float32)


def evaluate_retrieval(
    encoder: Any,
    image_paths: Sequence[str | Path],
    captions: Sequence[str],
    caption_image: Sequence[int] | np.ndarray,
    sparsify: Sparsify | str = "threshold",
    sweep_ks: Sequence[int] | None = None,
    batch_size: int = 32,
    chunk_size: int = CHUNK_SIZE,
    dataset: str = "",
    progress: Progress = _no_progress,
) -> RetrievalReport:
    """Encode images and captions with ``encoder`` (the documented ``Encoder`` API) and score R@1/5/10.

    ``sweep_ks``: when given, also run the top-k sparsity sweep (one extra encoding pass at top-max(ks),
    skipped when the main vectors already hold enough dims).
    """
    sp_mode = Sparsify.parse(sparsify) if isinstance(sparsify, str) else sparsify
    if not image_paths or not captions:
        raise DataError(f"Nothing to evaluate in {dataset or 'the data'}: no images or no captions.")
    ti = _check_text_image(caption_image, len(captions), len(image_paths))
    images = _encode(encoder, "encode_images", list(image_paths), sp_mode, batch_size)
    texts = _encode(encoder, "encode_texts", list(captions), sp_mode, batch_size)
    rec = recall_from_vectors(texts, images, ti, chunk_size=chunk_size, progress=progress)
    report = RetrievalReport(
        recall=rec,
        sparsify=str(sp_mode),
        active_dims_images=active_dims(images),
        active_dims_texts=active_dims(texts),
        vocab_size=int(images.shape[1]),
        dataset=dataset,
    )
    if sweep_ks:
        kmax = max(sweep_ks)
        if sp_mode.mode == "none" or (sp_mode.mode == "topk" and (sp_mode.k or 0) >= kmax):
            wide_t, wide_i = texts, images
        else:
            wide = Sparsify("topk", kmax)
            wide_i = _encode(encoder, "encode_images", list(image_paths), wide, batch_size)
            wide_t = _encode(encoder, "encode_texts", list(captions), wide, batch_size)
        report.sweep = sparsity_sweep(wide_t, wide_i, ti, sweep_ks, chunk_size=chunk_size, progress=progress)
    return report
