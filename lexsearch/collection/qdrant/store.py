"""A collection in Qdrant: a server or cluster (``qdrant://HOST[:PORT]/NAME``), or its in-process engine over
files in a folder (``qdrant:///ABS/DIR/NAME``), behind the search interface.

The candidate stage is one ``query_points`` over the exact sparse index (the query's strongest terms, the
+/-/query-word filters as a payload filter on ``terms``); the re-rank reads the candidates' vectors in one
``retrieve`` and runs the very code the embedded store's answers go through (exact lexical score of the full
query, dense fusion, explanations), so both homes give the same answers. The model's identity, the roots
and the vocabulary (column -> word) live in the collection's metadata.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qs

import numpy as np

from lexsearch.collection.interface import Where
from lexsearch.collection.qdrant import points as pt
from lexsearch.errors import (
    CollectionBusyError,
    CollectionNotFoundError,
    IndexError_,
    LexsearchError,
    UsageError,
)
from lexsearch.index.photometa import PHOTO_FIELDS
from lexsearch.index.store import ImageRow, check_model

logger = logging.getLogger(__name__)

DEFAULT_PORT = 6333
SCHEMA = "lexsearch-qdrant-1"
# Points per upsert / retrieve request: large enough to amortise a round trip, small enough for a request.
WRITE_BATCH = 256
READ_BATCH = 1024
# An in-process engine is one process's: another rank waits this long for its turn to write (tests only).
LOCAL_WAIT_S = 300.0
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class Address(str):
    """A collection's ``qdrant://`` address as its ``path`` (what messages show); ``.name`` its name, as a
    folder's ``Path.name`` is the embedded store's."""

    name: str

    def __new__(cls, text: str, name: str) -> Address:
        out = super().__new__(cls, text)
        out.name = name
        return out


class Spec:
    """A parsed ``qdrant://`` address: a server (``url``) or an in-process engine (``folder``)."""

    def __init__(self, spec: str) -> None:
        self.text = spec
        rest, _, query = spec[len("qdrant://") :].partition("?")
        self.options = {k: v[-1] for k, v in parse_qs(query).items()}
        usage = "give qdrant://HOST[:PORT]/NAME (a server) or qdrant:///ABS/DIR/NAME (in-process, files in /ABS/DIR)"
        if rest.startswith("/"):
            self.folder, self.name = os.path.split(rest.rstrip("/"))
            self.url = None
            if not self.folder or not os.path.isabs(self.folder):
                raise UsageError(f"{spec}: no folder; {usage}.")
        else:
            host, _, self.name = rest.partition("/")
            self.folder = None
            if not host:
                raise UsageError(f"{spec}: no host; {usage}.")
            if ":" not in host:
                host = f"{host}:{DEFAULT_PORT}"
            self.url = f"{self.options.get('scheme', 'http')}://{host}"
        if not self.name or not _NAME.match(self.name):
            raise UsageError(
                f"{spec}: the collection name must be letters, digits, '_', '-' or '.'; {usage}."
            )

    @property
    def local(self) -> bool:
        return self.folder is not None


def _client_module() -> Any:
    try:
        import qdrant_client
    except ImportError:
        raise UsageError(
            "Collections in Qdrant need the Qdrant client: pip install 'lexsearch[qdrant]'"
        ) from None
    return qdrant_client


def _connect(spec: Spec, create: bool) -> Any:
    qdrant_client = _client_module()
    if spec.local:
        if not os.path.isdir(spec.folder):
            if not create:
                raise CollectionNotFoundError(
                    f"No Qdrant folder at {spec.folder}. Create the collection with: lexsearch index DIR "
                    f"--model MODEL_DIR --collection {spec.text}"
                )
            os.makedirs(spec.folder, exist_ok=True)
        deadline = time.monotonic() + LOCAL_WAIT_S
        while True:
            try:
                return qdrant_client.QdrantClient(path=spec.folder)
            except RuntimeError as exc:  # another process holds the in-process engine's folder
                if "already accessed" not in str(exc) or not create or time.monotonic() > deadline:
                    raise CollectionBusyError(
                        f"{spec.folder} is open in another process (the in-process Qdrant engine is one "
                        "process's at a time; a Qdrant server takes many)."
                    ) from None
                time.sleep(0.05)
    return qdrant_client.QdrantClient(
        url=spec.url, api_key=os.environ.get("QDRANT_API_KEY") or None, timeout=60
    )


@contextlib.contextmanager
def _reaching(spec: Spec) -> Iterator[None]:
    """Errors of the server or the network as one line naming the address (never a traceback)."""
    try:
        yield
    except LexsearchError:
        raise
    except Exception as exc:
        mod = type(exc).__module__
        if mod.startswith(("qdrant_client", "httpx", "httpcore", "grpc")) or isinstance(exc, OSError):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise IndexError_(f"Qdrant at {spec.url or spec.folder}: {first}") from exc
        raise


class QdrantCollection:
    """The ``SearchCollection`` of a Qdrant collection; writers also use the methods under "write side"."""

    def __init__(self, spec: Spec, client: Any, readonly: bool) -> None:
        self.spec = spec
        self.path = Address(spec.text, spec.name)
        self.name = spec.name
        self.readonly = readonly
        self._client = client
        self._models = _client_module().models
        self._meta: dict[str, Any] | None = None
        self._words: list[str] | None = None

    # ------------------------------------------------------------------------------ opening and meta
    @classmethod
    def open(cls, spec: str, readonly: bool = True, recreate: bool = False) -> QdrantCollection:
        parsed = Spec(spec)
        with _reaching(parsed):
            client = _connect(parsed, create=not readonly)
            col = cls(parsed, client, readonly)
            exists = client.collection_exists(parsed.name)
            if recreate and exists and not readonly:
                client.delete_collection(parsed.name)
                exists = False
        if readonly and not exists:
            col.close()
            raise CollectionNotFoundError(
                f"No collection {parsed.name} in Qdrant at {parsed.url or parsed.folder}. Create it with: "
                f"lexsearch index DIR --model MODEL_DIR --collection {spec}"
            )
        return col

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    def __enter__(self) -> QdrantCollection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _metadata(self) -> dict[str, Any]:
        with _reaching(self.spec):
            if not self._client.collection_exists(self.name):
                return {}
            return dict(self._client.get_collection(self.name).config.metadata or {})

    @property
    def meta(self) -> dict[str, Any]:
        """The model's identity and the roots, as ``lexsearch index`` recorded them (read once)."""
        if self._meta is None:
            stored = self._metadata()
            self._words = stored.pop("words", None)
            self._meta = stored
        return dict(self._meta)

    def words(self) -> list[str] | None:
        """The vocabulary the vectors' columns stand for (column -> word), as stored with the collection."""
        _ = self.meta  # reads the metadata once, words included
        return self._words

    @property
    def max_image_id(self) -> int:
        return 0  # point ids are hashes, not a sequence: nothing sizes a score array by them

    # ------------------------------------------------------------------------------ read side
    def candidates(
        self,
        terms: np.ndarray,
        weights: np.ndarray,
        filters: Any = None,
        k: int = 1000,
        prune: Any = None,
        where: Where | None = None,
    ) -> Any:
        """Qdrant's exact sparse search over ``terms``: the candidate stage with the same filters.

        ``prune`` has no approximation to make here (Qdrant's sparse index is exact); it only widens the
        pool to ``prune.pool * k``, as the embedded store's pruned stage hands on.
        """
        from lexsearch.search.candidates import Candidates

        empty = Candidates(np.empty(0, np.intp), np.empty(0, np.float32))
        if terms.size == 0 or (filters is not None and filters.any_of is not None and not filters.any_of):
            return empty
        if prune is not None:
            k = math.ceil(k * prune.pool)
        m = self._models
        with _reaching(self.spec):
            found = self._client.query_points(
                self.name,
                query=m.SparseVector(indices=[int(t) for t in terms], values=[float(w) for w in weights]),
                using=pt.SPARSE,
                query_filter=pt.query_filter(m, filters, where, self._cameras),
                limit=int(k),
                with_payload=False,
            ).points
        ids = np.fromiter((p.id for p in found), np.int64, len(found)).astype(np.intp)
        scores = np.fromiter((p.score for p in found), np.float32, len(found))
        keep = scores > 0
        return Candidates(ids[keep], scores[keep])

    def _cameras(self) -> list[str]:
        """The distinct ``camera`` payload values (a facet: one request, however many points)."""
        with _reaching(self.spec):
            hits = self._client.facet(self.name, key="camera", limit=100_000).hits
        return [str(h.value) for h in hits]

    def _retrieve(self, ids: Sequence[int], vectors: Any, payload: Any) -> dict[int, Any]:
        out: dict[int, Any] = {}
        unique = list(dict.fromkeys(int(i) for i in ids))
        with _reaching(self.spec):
            for a in range(0, len(unique), READ_BATCH):
                for rec in self._client.retrieve(
                    self.name, ids=unique[a : a + READ_BATCH], with_vectors=vectors, with_payload=payload
                ):
                    out[int(rec.id)] = rec
        return out

    def forward(self, image_ids: Iterable[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        found = self._retrieve(list(image_ids), [pt.SPARSE], False)
        out = {}
        for i, rec in found.items():
            row = _sparse_of(rec)
            if row is not None:
                out[i] = row
        return out

    def forward_block(self, image_ids: Sequence[int], dense: bool = True) -> Any:
        """Sparse rows (and dense vectors) of ``image_ids`` in that order, from one retrieve."""
        from lexsearch.index.postings import RowBlock

        ids = [int(i) for i in image_ids]
        wanted = [pt.SPARSE, pt.DENSE] if dense and self._dense_dim() else [pt.SPARSE]
        found = self._retrieve(ids, wanted, False)
        rows = [_sparse_of(found[i]) if i in found else None for i in ids]
        empty = (np.empty(0, np.int32), np.empty(0, np.float32))
        rows = [r or empty for r in rows]
        indptr = np.zeros(len(ids) + 1, np.int64)
        np.cumsum([t.size for t, _ in rows], out=indptr[1:])
        terms = np.concatenate([t for t, _ in rows]) if rows else empty[0]
        weights = np.concatenate([w for _, w in rows]) if rows else empty[1]
        matrix, has = None, np.zeros(len(ids), bool)
        if dense:
            dim = self._dense_dim()
            matrix = np.zeros((len(ids), dim), np.float32)
            for j, i in enumerate(ids):
                vec = _dense_of(found.get(i))
                if vec is not None:
                    matrix[j], has[j] = vec, True
        return RowBlock(indptr, terms.astype(np.int32), weights.astype(np.float32), matrix, has)

    def _dense_dim(self) -> int:
        return int(self.meta.get("dense_dim") or 0)

    def dense_vectors(self, image_ids: Iterable[int]) -> dict[int, np.ndarray]:
        if not self._dense_dim():
            return {}
        found = self._retrieve(list(image_ids), [pt.DENSE], False)
        return {i: v for i, rec in found.items() if (v := _dense_of(rec)) is not None}

    def dense_scores(self, q: np.ndarray, image_ids: np.ndarray) -> np.ndarray:
        from lexsearch.index.dense import inner_products

        ids = np.asarray(image_ids).astype(np.int64).ravel()
        return inner_products(q, ids, self.dense_vectors(ids.tolist()))

    def dense_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest dense vectors by inner product (HNSW on a server; exact in the in-process engine)."""
        if not self._dense_dim():
            return np.empty(0, np.intp), np.empty(0, np.float32)
        with _reaching(self.spec):
            found = self._client.query_points(
                self.name,
                query=np.asarray(q, np.float32).ravel().tolist(),
                using=pt.DENSE,
                limit=int(k),
                with_payload=False,
            ).points
        ids = np.fromiter((p.id for p in found), np.int64, len(found)).astype(np.intp)
        return ids, np.fromiter((p.score for p in found), np.float32, len(found))

    def image_paths(self, image_ids: Iterable[int]) -> dict[int, str]:
        found = self._retrieve(list(image_ids), False, ["path", "path_bytes", "status"])
        return {
            i: pt.payload_path(rec.payload) for i, rec in found.items() if rec.payload.get("status") == "ok"
        }

    def file_exists(self, path: str) -> bool:
        return os.path.exists(path)

    def rows_at(self, paths: Iterable[str]) -> dict[str, ImageRow]:
        by_id = {pt.point_id(p): p for p in paths}
        found = self._retrieve(list(by_id), False, list(pt.FACTS))
        return {by_id[i]: _image_row(i, rec.payload) for i, rec in found.items()}

    def metadata(self, image_ids: Iterable[int], fields: Sequence[str] | None = None) -> dict[int, dict]:
        wanted = (
            list(fields) if fields else ["width", "height", "exif_time", "size", "mtime_ns", *PHOTO_FIELDS]
        )
        found = self._retrieve(list(image_ids), False, wanted)
        return {i: {f: rec.payload.get(f) for f in wanted} for i, rec in found.items()}

    def count(self, status: str | None = "ok") -> int:
        m = self._models
        flt = None
        if status is not None:
            flt = m.Filter(must=[m.FieldCondition(key="status", match=m.MatchValue(value=status))])
        with _reaching(self.spec):
            if not self._client.collection_exists(self.name):
                return 0
            return int(self._client.count(self.name, count_filter=flt, exact=True).count)

    def failures(self) -> list[tuple[str, str]]:
        m = self._models
        flt = m.Filter(must=[m.FieldCondition(key="status", match=m.MatchValue(value="failed"))])
        out = [(pt.payload_path(p), p.get("error") or "failed") for _, p in self.scroll_payloads(flt)]
        return sorted(out)

    def cached_query(self, text: str) -> Any:
        return None  # no query cache in Qdrant yet: each query is encoded (the same vector, rounded alike)

    def cache_query(self, text: str, sparse_row: Any, dense_row: np.ndarray | None) -> None:
        return None

    # ------------------------------------------------------------------------------ write side
    def bind_model(
        self, model: dict[str, Any], rebuild_command: str, roots: Sequence[str] = (), words: Any = None
    ) -> None:
        """Create the collection for ``model`` (vectors sized by it), or refuse one written by another
        model; record the roots. Safe to call from every rank at once (creation races are tolerated)."""
        with _reaching(self.spec):
            if not self._client.collection_exists(self.name):
                self._create(model, words)
            stored = self._metadata()
            if stored.get("model_id") is None:
                raise IndexError_(
                    f"{self.path} is a Qdrant collection lexsearch did not write; use another name."
                )
            check_model(stored, model, self.path, rebuild_command)  # type: ignore[arg-type]
            update = {}
            if model.get("model_path") and model.get("model_path") != stored.get("model_path"):
                update["model_path"] = model["model_path"]
            merged = list(dict.fromkeys([*(stored.get("roots") or []), *roots]))
            if merged != (stored.get("roots") or []):
                update["roots"] = merged
            if update:
                self._client.update_collection(self.name, metadata={**stored, **update})
        self._meta = None

    def _create(self, model: dict[str, Any], words: Any) -> None:
        m = self._models
        dim = int(model.get("dense_dim") or 0)
        opts = self.spec.options
        # float16 on a server halves what a point's vectors take; the values are float16 already.
        vectors = {}
        if dim:
            vectors[pt.DENSE] = m.VectorParams(
                size=dim,
                distance=m.Distance.DOT,
                datatype=m.Datatype.FLOAT16,
                on_disk=opts.get("dense_on_disk") == "1" or None,
            )
        sparse = {
            pt.SPARSE: m.SparseVectorParams(
                index=m.SparseIndexParams(
                    datatype=m.Datatype.FLOAT16, on_disk=opts.get("sparse_on_disk") == "1"
                )
            )
        }
        meta = {**model, "schema": SCHEMA, "roots": [], "words": list(words) if words is not None else None}
        try:
            self._client.create_collection(
                self.name,
                vectors_config=vectors,
                sparse_vectors_config=sparse,
                shard_number=int(opts["shards"]) if "shards" in opts else None,
                replication_factor=int(opts["replication"]) if "replication" in opts else None,
                metadata=meta,
            )
        except Exception:
            if not self._client.collection_exists(self.name):  # not another rank that created it first
                raise
            return
        if not self.spec.local:  # the in-process engine has no payload indexes (it scans)
            schema = m.PayloadSchemaType
            for key, kind in (
                ("terms", schema.INTEGER),
                ("status", schema.KEYWORD),
                ("bucket", schema.INTEGER),
                ("folder", schema.KEYWORD),
                ("taken_key", schema.INTEGER),
                ("camera", schema.KEYWORD),  # its facet lists the cameras a camera: filter may mean
                ("folders", schema.KEYWORD),
                ("folder_names", schema.KEYWORD),
                ("orientation", schema.KEYWORD),
            ):
                self._client.create_payload_index(self.name, key, kind)

    def scroll_payloads(self, flt: Any = None, keys: Sequence[str] = pt.FACTS) -> Iterator[tuple[int, dict]]:
        """(point id, payload) of every point passing ``flt``, a page at a time."""
        offset = None
        with _reaching(self.spec):
            while True:
                page, offset = self._client.scroll(
                    self.name, scroll_filter=flt, limit=READ_BATCH, offset=offset, with_payload=list(keys)
                )
                for rec in page:
                    yield int(rec.id), rec.payload
                if offset is None:
                    break

    def dupe_rows(self) -> tuple[np.ndarray, np.ndarray, list[str | None], dict[int, dict]]:
        """What ``lexsearch.dupes`` reads (as ``EmbeddedCollection.dupe_rows``): the indexed points with a
        dense vector, a page at a time: (ids, L2-normalised vectors, hashes or None, facts by id)."""
        m = self._models
        flt = m.Filter(must=[m.FieldCondition(key="status", match=m.MatchValue(value="ok"))])
        keys = ["path", "path_bytes", "width", "height", "size", "taken", "phash"]
        dim = self._dense_dim()
        ids, vecs, hashes, facts = [], [], [], {}
        offset = None
        with _reaching(self.spec):
            while True:
                page, offset = self._client.scroll(
                    self.name,
                    scroll_filter=flt,
                    limit=READ_BATCH,
                    offset=offset,
                    with_payload=keys,
                    with_vectors=[pt.DENSE],
                )
                for rec in page:
                    vec = _dense_of(rec)
                    if vec is None:
                        continue
                    payload = rec.payload or {}
                    ids.append(int(rec.id))
                    vecs.append(vec)
                    hashes.append(payload.get("phash"))
                    facts[int(rec.id)] = {
                        "path": pt.payload_path(payload),
                        **{k: payload.get(k) for k in ("width", "height", "size", "taken")},
                    }
                if offset is None:
                    break
        order = np.argsort(np.array(ids, np.int64), kind="stable")
        matrix = np.stack(vecs)[order].astype(np.float32) if vecs else np.zeros((0, max(dim, 1)), np.float32)
        if len(matrix):
            matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        return np.array(ids, np.int64)[order], matrix, [hashes[k] for k in order], facts

    def owned_facts(self, rank: int, world: int) -> dict[int, dict]:
        """Payload facts of the points that indexing rank ``rank`` of ``world`` owns (its buckets)."""
        m = self._models
        flt = None
        if world > 1:
            flt = m.Filter(
                must=[m.FieldCondition(key="bucket", match=m.MatchAny(any=pt.rank_buckets(rank, world)))]
            )
        return dict(self.scroll_payloads(flt))

    def points_with_vectors(self, ids: Sequence[int]) -> dict[int, Any]:
        """Whole points (payload and vectors): what a moved file's new point copies."""
        return self._retrieve(list(ids), True, True)

    def upsert(self, points: list[Any]) -> None:
        """Write points (idempotent: a point id is its path's hash); returns once they are stored."""
        with _reaching(self.spec):
            for a in range(0, len(points), WRITE_BATCH):
                self._client.upsert(self.name, points[a : a + WRITE_BATCH], wait=True)

    def set_facts(self, pid: int, facts: dict[str, Any]) -> None:
        with _reaching(self.spec):
            self._client.set_payload(self.name, payload=facts, points=[int(pid)], wait=True)

    def delete(self, ids: Iterable[int]) -> None:
        ids = [int(i) for i in ids]
        with _reaching(self.spec):
            for a in range(0, len(ids), WRITE_BATCH):
                self._client.delete(self.name, points_selector=ids[a : a + WRITE_BATCH], wait=True)

    def release(self) -> None:
        """Let another process open an in-process engine's folder (a rank's turn to write is over)."""
        self.close()

    def reopen(self) -> None:
        if self._client is None:
            self._client = _connect(self.spec, create=not self.readonly)


def _sparse_of(rec: Any) -> tuple[np.ndarray, np.ndarray] | None:
    vec = (rec.vector or {}).get(pt.SPARSE) if rec is not None else None
    if vec is None:
        return None
    terms = np.asarray(vec.indices, np.int32)
    weights = np.asarray(vec.values, np.float32)
    order = np.argsort(terms, kind="stable")
    return terms[order], weights[order]


def _dense_of(rec: Any) -> np.ndarray | None:
    vec = (rec.vector or {}).get(pt.DENSE) if rec is not None else None
    return None if vec is None else pt.half(np.asarray(vec, np.float32))


def _image_row(pid: int, payload: dict) -> ImageRow:
    return ImageRow(
        pid,
        pt.payload_path(payload),
        int(payload.get("size") or 0),
        int(payload.get("mtime_ns") or 0),
        payload.get("hash"),
        payload.get("status") or "ok",
    )
