"""What the server does, without HTTP: one open collection and one warm model behind a lock.

The web app (``app.py``) turns requests into calls on :class:`SearchService`; tests and the benchmark can
call it directly. Everything about an image is reached through its collection id, never through a path
taken from a request.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lexsearch import config
from lexsearch.display import utf8_text
from lexsearch.errors import DataError, UsageError
from lexsearch.index.dense import inner_products
from lexsearch.index.postings import RowBlock
from lexsearch.limits import MAX_TOP
from lexsearch.search import (
    PostingsIndex,
    PruneConfig,
    explain_text,
    results_to_json,
    search,
    search_by_image,
)
from lexsearch.search.explain import heatmap_columns, shown_columns

logger = logging.getLogger(__name__)

THUMB_SIDE = 320  # long side of a grid thumbnail: sharp in a ~220 px card on a 1.5x screen
LARGE_SIDE = 1600  # long side of the detail view's image (a 24 MP original is not sent whole)
EXPLAIN_TOP = 24  # an image's own words listed in the detail view
PATCH_CACHE = 16  # images whose (P, V) patch vectors stay in memory: clicking through chips re-renders only


# Forward rows (and dense vectors) a warm server keeps in memory: the candidates of one query are ~1000
# images, and reading + decoding their rows from SQLite was ~60% of a new query's time at 10k images
# (bench/serve_latency.py). 100k rows of ~300 words are ~300 MB at most; a smaller collection needs less.
WARM_ROWS = 100_000


class WarmCollection:
    """A collection's read API with forward rows and dense vectors held in memory (least recently used
    dropped past ``max_rows``). Everything else is the collection's own. ``clear()`` when it changes."""

    def __init__(self, collection: Any, max_rows: int = WARM_ROWS) -> None:
        self._collection = collection
        self._max = max_rows
        self._rows: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._dense: OrderedDict[int, np.ndarray | None] = OrderedDict()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)

    def clear(self) -> None:
        self._rows.clear()
        self._dense.clear()

    def _cached(self, cache: OrderedDict, ids: list[int], fetch) -> dict[int, Any]:
        out: dict[int, Any] = {}
        missing = []
        for i in ids:
            value = cache.get(i, cache)
            if value is cache:
                missing.append(i)
            else:
                cache.move_to_end(i)
                out[i] = value
        if missing:
            fetched = fetch(missing)
            for i in missing:
                cache[i] = fetched.get(i)
                out[i] = cache[i]
            while len(cache) > self._max:
                cache.popitem(last=False)
        return {i: v for i, v in out.items() if v is not None}

    def forward(self, image_ids) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        return self._cached(self._rows, [int(i) for i in image_ids], self._collection.forward)

    def forward_block(self, image_ids, dense: bool = True) -> RowBlock:
        """As ``Collection.forward_block``, from the rows in memory (missing ones read in one block)."""
        ids = [int(i) for i in image_ids]
        fresh: list[RowBlock] = []

        def fetch(missing: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
            block = self._collection.forward_block(missing, dense=True)
            fresh.append(block)
            # Views, not copies: a row kept keeps its block's arrays (~2 MB per 1,000 rows) alive.
            ptr, terms, weights, vecs = block.indptr.tolist(), block.terms, block.weights, block.dense
            rows = {
                i: (terms[ptr[k] : ptr[k + 1]], weights[ptr[k] : ptr[k + 1]]) for k, i in enumerate(missing)
            }
            for k, (i, has) in enumerate(zip(missing, block.has_dense.tolist())):
                self._dense[i] = vecs[k] if has else None
            return {i: r for i, r in rows.items() if r[0].size}

        rows = self._cached(self._rows, ids, fetch)
        if fresh and len(ids) == len(fresh[0].indptr) - 1 and dense:
            # None of them was in memory: the block just read is the answer, in the same order.
            while len(self._dense) > self._max:
                self._dense.popitem(last=False)
            return fresh[0]
        empty = (np.empty(0, np.int32), np.empty(0, np.float32))
        parts = [rows.get(i, empty) for i in ids]
        indptr = np.zeros(len(ids) + 1, np.int64)
        np.cumsum([t.size for t, _ in parts], out=indptr[1:])
        terms = np.concatenate([t for t, _ in parts]) if parts else empty[0]
        weights = np.concatenate([w for _, w in parts]) if parts else empty[1]
        vecs = self._cached(self._dense, ids, self._collection.dense_vectors) if dense else {}
        has = np.fromiter((i in vecs for i in ids), bool, len(ids))
        matrix = None
        if dense:
            # The collection's width even when none of these images has a vector (or there are none): a
            # (n, 0) matrix would make a query's (D,) dense product fail.
            dim = next((v.size for v in vecs.values()), int(self._collection.meta.get("dense_dim") or 0))
            matrix = np.zeros((len(ids), dim), np.float32)
            if vecs:
                matrix[has] = np.stack([vecs[i] for i in ids if i in vecs])
        return RowBlock(indptr, terms, weights, matrix, has)

    def dense_scores(self, q: np.ndarray, image_ids: np.ndarray) -> np.ndarray:
        """As ``Collection.dense_scores``, from the vectors in memory."""
        ids = np.asarray(image_ids).astype(np.int64).ravel()
        return inner_products(q, ids, self._cached(self._dense, ids.tolist(), self._collection.dense_vectors))


class Rows(list):
    """JSON rows of results, how many matches were left out because their file is gone, whether each row's
    ``path`` is the very name stored (no byte of it outside UTF-8), and the search's notes (``Results.notes``)."""

    stale: int = 0
    exact_paths: bool = False
    paths: list[str] = []  # each row's stored path (``path`` in a row is its UTF-8 text)
    notes: list[str] = []  # replaced per answer, never appended to


class NotFound(Exception):
    """No image with that id in the collection (or the id is not an id): the app answers 404."""


class SearchService:
    """A collection opened read-only and its model held warm; every method is safe to call from threads."""

    def __init__(self, collection: Any, encoder: Any, thumbs_dir: Path | None = None) -> None:
        # Rows kept in memory only where the collection changes under one writer who moves its generation
        # (the embedded store); a Qdrant collection's rows are read from it each query (ranks write anytime).
        self.collection = WarmCollection(collection) if hasattr(collection, "postings") else collection
        self.encoder = encoder
        self._lock = (
            threading.Lock()
        )  # the SQLite connection, the scratch score array and torch: one at a time
        self._index: PostingsIndex | None = None
        self._generation: Any = None
        self._patches: OrderedDict[int, np.ndarray] = OrderedDict()
        key = hashlib.sha1(str(collection.path).encode()).hexdigest()[:12]
        self.thumbs_dir = thumbs_dir or config.home() / "thumbs" / key
        self._word_columns: dict[str, int] | None = None
        self._count: tuple[Any, int] | None = None  # (generation, images) behind info()
        self.precision = "fp32"  # the LM's, for new queries (set by warm_up)

    # ------------------------------------------------------------------------------------- search
    def _postings(self) -> PostingsIndex | None:
        """The long-lived postings index, renewed when the collection changed (an index run meanwhile);
        None for a collection without postings here (Qdrant: its own candidate stage)."""
        if not hasattr(self.collection, "postings"):
            return None
        generation = self.collection.meta.get("generation")
        if self._index is None or generation != self._generation:
            self.collection.clear()
            self._index = PostingsIndex.from_collection(self.collection)
            self._generation = generation
        return self._index

    def search(
        self,
        q: str,
        top: int = 10,
        *,
        expand: bool = False,
        rerank: bool = True,
        pruned: bool = False,
        min_score: float | None = None,
    ) -> list[dict[str, Any]]:
        """``lexsearch query --json`` for ``q``, plus each result's collection ``id``."""
        top = _check_top(top)
        with self._lock:
            results = search(
                self.collection,
                self.encoder,
                q,
                top=top,
                rerank_candidates=rerank,
                min_score=min_score,
                prune=PruneConfig() if pruned else None,
                index=self._postings(),
                expand=expand,
            )
        rows = Rows(results_to_json(results, with_ids=True))
        rows.stale = int(getattr(results, "stale", 0))
        rows.exact_paths = all(utf8_text(r.path) == r.path for r in results)
        rows.paths = [r.path for r in results]
        rows.notes = list(getattr(results, "notes", ()))
        return rows

    def search_output(self, q: str, top: int, form: str, **options: Any) -> tuple[bytes, Rows]:
        """(what ``lexsearch query`` prints for ``q`` in ``form``: ``output.FORMATS``, the rows behind it:
        their ``stale`` count and ``notes`` go in headers).

        The very bytes the command prints from this server's JSON answer (``client.results_from_rows`` over
        the rows, with their stored paths): a query process only writes them out.
        """
        from lexsearch.search.output import FORMATS, render
        from lexsearch.serve.client import results_from_rows

        if form not in FORMATS:
            raise UsageError(f"format must be one of {', '.join(FORMATS)}, not {form!r}.")
        rows = self.search(q, top, **options)
        results = results_from_rows([dict(r, path=p) for r, p in zip(rows, rows.paths)])
        return render(results, form), rows

    def search_image(self, data: bytes, top: int = 10) -> list[dict[str, Any]]:
        """Images like the uploaded image ``data`` (any format the indexer reads)."""
        top = _check_top(top)
        from lexsearch.model.images import open_image

        # open_image takes a path (it guards against decompression bombs before decoding): a private temp file.
        with tempfile.TemporaryDirectory(prefix="lexsearch-upload-") as tmp:
            path = Path(tmp) / "upload"
            path.write_bytes(data)
            try:
                image = open_image(path)
            except DataError as exc:  # its message starts with the private temp path: say "the upload"
                reason = str(exc).removeprefix(f"{path}: ")
                raise UsageError(f"the uploaded file: {reason}") from None
        with self._lock:
            results = search_by_image(self.collection, self.encoder, image, top=top, index=self._postings())
        return results_to_json(results, with_ids=True)

    def similar(self, image_id: int, top: int = 10) -> list[dict[str, Any]]:
        """More like this: the collection image ``image_id`` as the query (itself left out)."""
        top = _check_top(top)
        image = self._open(image_id)
        with self._lock:
            results = search_by_image(
                self.collection, self.encoder, image, top=top + 1, index=self._postings()
            )
        out = [r for r in results_to_json(results, with_ids=True) if r["id"] != image_id][:top]
        for rank, r in enumerate(out, 1):
            r["rank"] = rank
        return out

    def explain(self, image_id: int, top: int = EXPLAIN_TOP) -> dict[str, Any]:
        """The image's own strongest words, from its indexed vector (the one queries score)."""
        path = self.path_of(image_id)
        with self._lock:
            row = self.collection.forward([image_id]).get(image_id)
        words: list[dict[str, Any]] = []
        if row is not None:
            cols, weights = row
            order = np.argsort(-weights, kind="stable")[:top]
            names = self.encoder.words(cols[order])
            words = [{"word": w, "weight": round(float(x), 6)} for w, x in zip(names, weights[order])]
        # JSON is UTF-8 text: a non-UTF-8 byte of a file name shows as \xNN (as in ``query --json``).
        return {"id": image_id, "path": utf8_text(path), "words": words}

    def explain_text(self, text: str) -> dict[str, Any]:
        """What a query of ``text`` means to the model: ``lexsearch explain --text TEXT --json``, from the very
        vector this server's search of ``text`` scores (same encoder, same query cache)."""
        with self._lock:
            return explain_text(self.collection, self.encoder, text)

    def info(self) -> dict[str, Any]:
        # Every `lexsearch query` asks this first (discovery's liveness check): the count (a scan of the
        # images table, ~0.2 s at 1M) is counted again only after the collection changed.
        with self._lock:
            generation = self.collection.meta.get("generation")
            if self._count is None or self._count[0] != generation:
                self._count = (generation, self.collection.count())
            count = self._count[1]
        return {
            "collection": str(self.collection.path),
            "name": self.collection.path.name,
            "images": count,
            "max_top": MAX_TOP,  # the page stops asking for more there
        }

    def dupes(self, threshold: float | None = None) -> dict[str, Any]:
        """``lexsearch dupes --json``, each file with its ``id`` (for /thumb/{id}), and the note on missing
        hashes (or null)."""
        from lexsearch.dupes import DEFAULT_THRESHOLD, find_dupes, missing_note

        with self._lock:
            report = find_dupes(self.collection, DEFAULT_THRESHOLD if threshold is None else threshold)
            note = missing_note(report, self.collection)
        return {**report.to_json(), "note": note}

    # ------------------------------------------------------------------------------------- images by id
    def path_of(self, image_id: int) -> str:
        """The indexed file of ``image_id``; NotFound for any id the collection does not hold (as 'ok')."""
        if not isinstance(image_id, int) or image_id <= 0:
            raise NotFound(image_id)
        with self._lock:
            path = self.collection.image_paths([image_id]).get(image_id)
        if path is None:
            raise NotFound(image_id)
        return path

    def _open(self, image_id: int) -> Image.Image:
        from lexsearch.model.images import open_image

        path = self.path_of(image_id)
        try:
            return open_image(path)
        except DataError:
            raise NotFound(image_id) from None  # moved or deleted since it was indexed

    def thumbnail(self, image_id: int) -> Path:
        """A JPEG thumbnail made once and kept under LEXSEARCH_HOME (renewed when the file changes)."""
        path = self.path_of(image_id)
        try:
            st = os.stat(path)
        except OSError:
            raise NotFound(image_id) from None
        stamp = hashlib.sha1(f"{path}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
        thumb = self.thumbs_dir / f"{image_id}-{stamp}.jpg"
        if thumb.is_file():
            return thumb
        image = self._open(image_id)
        image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
        self.thumbs_dir.mkdir(parents=True, exist_ok=True)
        for old in self.thumbs_dir.glob(f"{image_id}-*.jpg"):
            old.unlink(missing_ok=True)  # the thumbnail of an earlier version of the file
        tmp = thumb.with_suffix(".tmp")
        image.save(tmp, format="JPEG", quality=88)
        os.replace(tmp, thumb)  # atomic: a concurrent request never reads half a file
        return thumb

    def large(self, image_id: int) -> tuple[bytes, str]:
        """The image upright in RGB (HEIC and EXIF rotation handled), at most LARGE_SIDE: (bytes, media type)."""
        image = self._open(image_id)
        image.thumbnail((LARGE_SIDE, LARGE_SIDE), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        if max(image.size) <= 512:
            image.save(buf, format="PNG")  # small (toy) images: lossless, and PNG stays small
            return buf.getvalue(), "image/png"
        image.save(buf, format="JPEG", quality=90)
        return buf.getvalue(), "image/jpeg"

    # ------------------------------------------------------------------------------------- heat maps
    def word_columns(self, word: str) -> list[int]:
        """The vocabulary column of a word to draw: ``heatmap_columns``, the rule of ``explain --word``."""
        if self._word_columns is None:
            self._word_columns = shown_columns(self.encoder.vocab.words)
        return heatmap_columns(word, self.encoder.word_terms, self.encoder.words, self._word_columns)

    def heatmap_png(self, image_id: int, word: str) -> bytes:
        """The one-word heat map of ``word`` over image ``image_id`` (lexsearch.explain), as PNG bytes."""
        from lexsearch.explain import HeatScale, render_word, word_patch_scores

        columns = self.word_columns(word)
        image = self._open(image_id)
        with self._lock:
            patches = self._patches.get(image_id)
            if patches is None:
                t0 = time.perf_counter()
                patches = self.encoder.encode_patches(image)
                logger.debug(
                    "patch vectors of image %d in %.0f ms", image_id, 1000 * (time.perf_counter() - t0)
                )
                self._patches[image_id] = patches
                while len(self._patches) > PATCH_CACHE:
                    self._patches.popitem(last=False)
            else:
                self._patches.move_to_end(image_id)
            grid = tuple(self.encoder.grid)
        scores = word_patch_scores(patches, columns)
        picture = render_word(image, grid, scores, word, HeatScale.for_vocab(patches.shape[1]))
        buf = io.BytesIO()
        picture.save(buf, format="PNG")
        return buf.getvalue()

    def warm_up(self, threads: int | None = None, precision: str = "fp32") -> None:
        """Load the networks and run each path once, so the first real query is as fast as the next.

        The server only runs inference, so the LM's LoRA weights are merged into its base weights: one matrix
        product per projection instead of three (tiny model, one thread: 11 -> 8 ms per new query's encoding;
        the vectors agree to float rounding, tests/serve). Then what every query shares is computed once
        (``LexVLA.prepare_queries``: the prompt prefix's key/value cache, the calibration's empty text), in
        the LM precision ``precision`` picks (``query_dtype``). ``threads`` sets torch's intra-op threads
        (default: torch's own choice).
        """
        self.encoder.encode_texts(["warm up"])  # loads the networks
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        model = getattr(self.encoder, "model", None)
        lm = getattr(model, "lm", None)
        if hasattr(lm, "merge_adapter"):
            lm.merge_adapter()
        if hasattr(model, "prepare_queries"):
            from lexsearch.model.encoder import autocast

            dtype = query_dtype(model, self.encoder.device, precision)
            with autocast(self.encoder.device):  # the cache in the dtype the queries' own tokens run in
                model.prepare_queries(dtype)
            self.precision = "bf16" if dtype == torch.bfloat16 else "fp32"
        self.encoder.encode_texts(["warm up"])
        with self._lock:
            self._postings()


PRECISIONS = ("auto", "fp32", "bf16")
# ``auto`` runs the LM in bfloat16 from this size on (Gemma 3 270M's layers: 100M parameters), on a CPU with
# bfloat16 matrix instructions: a new query's LM pass reads all its weights for ~16 tokens, and half the bytes
# is much less time (bench/gemma_query_latency.py, 2 busy cores: 137 -> 85 ms p50 per new query over HTTP;
# 122 -> 70 ms per encoding; vectors at cosine >= 0.9993 to float32, top-10 words overlap 0.98 on average).
# Smaller LMs gain nothing worth the rounding.
BF16_MIN_PARAMS = 50_000_000


def query_dtype(model: Any, device: Any, precision: str = "auto"):
    """The dtype a server runs the LM's text pass in: None (as loaded, float32) or ``torch.bfloat16``.

    ``fp32``: as loaded. ``bf16``: bfloat16. ``auto``: bfloat16 on a CPU with native bfloat16 matrix units
    (AMX or AVX-512 BF16) for an LM of ``BF16_MIN_PARAMS`` or more, else as loaded (a GPU already runs
    texts under bfloat16 autocast)."""
    import torch

    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r} (use {', '.join(PRECISIONS)})")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if getattr(device, "type", str(device)) != "cpu":
        return None
    native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    layers = sum(p.numel() for n, p in model.decoder.named_parameters() if "embed" not in n)
    return torch.bfloat16 if native and layers >= BF16_MIN_PARAMS else None


def _check_top(top: int) -> int:
    if not 1 <= int(top) <= MAX_TOP:
        raise UsageError(f"top must be between 1 and {MAX_TOP}.")
    return int(top)
