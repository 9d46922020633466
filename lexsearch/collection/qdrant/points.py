"""How an image becomes a Qdrant point, and the query's filters Qdrant filters: no client calls here.

A point per image: id = a 63-bit hash of its path (stable: the same file upserted again overwrites
itself, and every indexing rank computes the ids of its own files without asking anyone), a named sparse
vector ``sparse`` (vocabulary column -> weight) and a named dense vector ``dense``, both rounded to float16
exactly as the embedded store keeps them (so both homes score the same numbers), and the payload below.
A file that failed to index is a point without vectors (``status: failed``): it is remembered, not retried
until it changes, and no search can find it.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

SPARSE = "sparse"
DENSE = "dense"
# Points are spread over this many buckets (payload ``bucket`` = id % BUCKETS); indexing rank r of w owns
# the buckets b with b % w == r, so it reads back only its own points' facts (a filtered scroll).
BUCKETS = 4096
# Payload keys of the facts the indexer compares and the search shows; ``terms`` (the sparse vector's
# columns, as a list) is what +must / -exclude / the query-word rule filter on.
# ``phash`` (``lexsearch.index.phash``) is read back so an index run knows which points still lack one.
FACTS = ("path", "path_bytes", "size", "mtime_ns", "hash", "status", "taken_source", "phash")


def point_id(path: str) -> int:
    """A file's point id: the path's blake2b, 63 bits (never 0; positive in an int64)."""
    digest = hashlib.blake2b(os.fsencode(path), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 1) or 1


def bucket(pid: int) -> int:
    return pid % BUCKETS


def rank_buckets(rank: int, world: int) -> list[int]:
    return [b for b in range(BUCKETS) if b % world == rank]


def owned(pid: int, rank: int, world: int) -> bool:
    return bucket(pid) % world == rank


def path_payload(path: str) -> dict[str, Any]:
    """The path as JSON can hold it: text, plus its raw bytes (hex) when the name is not UTF-8."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(path)
        return {"path": raw.decode("utf-8", "backslashreplace"), "path_bytes": raw.hex()}
    return {"path": path}


def payload_path(payload: dict[str, Any]) -> str:
    raw = payload.get("path_bytes")
    return os.fsdecode(bytes.fromhex(raw)) if raw else payload["path"]


def half(values: np.ndarray) -> np.ndarray:
    """float32 values rounded through float16, as the embedded store keeps weights and dense vectors."""
    return np.asarray(values, np.float32).astype(np.float16).astype(np.float32)


def image_payload(path: str, size: int, mtime_ns: int, content_hash: str | None, **facts: Any) -> dict:
    pid = point_id(path)
    payload: dict[str, Any] = {
        **path_payload(path),
        "folder": path_payload(os.path.dirname(path))["path"],  # for folder filters (shown text)
        "size": int(size),
        "mtime_ns": int(mtime_ns),
        "hash": content_hash,
        "bucket": bucket(pid),
    }
    payload.update({k: v for k, v in facts.items() if v is not None})
    return payload


def photo_payload(path: str, width: int | None, height: int | None, photo: dict | None) -> dict[str, Any]:
    """The photo metadata of a point (``lexsearch.index.photometa``) and the keys its filters match:
    ``taken_key`` (the date as a number, for ranges), ``camera`` (make + model, lower case), ``folders``
    (every folder above the file) and ``folder_names`` (their names, lower case), ``orientation``."""
    from lexsearch.index.photometa import orientation

    if not photo:
        return {}
    out = {k: v for k, v in photo.items() if v is not None}
    if photo.get("taken"):
        out["taken_key"] = taken_key(photo["taken"])
    camera = " ".join(x for x in (photo.get("camera_make"), photo.get("camera_model")) if x)
    if camera:
        out["camera"] = camera.lower()
    folders, d = [], os.path.dirname(path)
    while d and d not in folders:
        folders.append(d)
        d = os.path.dirname(d)
    out["folders"] = [path_payload(f)["path"] for f in folders]
    out["folder_names"] = sorted({os.path.basename(f).lower() for f in folders if os.path.basename(f)})
    shape = orientation(width, height)
    if shape:
        out["orientation"] = shape
    return out


PHOTO_KEYS = ("taken_key", "camera", "folders", "folder_names", "orientation")


def taken_key(taken: str) -> int:
    """``2023-06-14T09:00:00`` (or a date ``2023-06-14``) as 20230614090000: ranges are numeric in Qdrant."""
    digits = "".join(ch for ch in taken if ch.isdigit())
    return int(digits.ljust(14, "0")[:14])


# --------------------------------------------------------------------------------------------- filters
def _has_all(models: Any, cols: tuple[int, ...]) -> Any:
    return models.Filter(
        must=[models.FieldCondition(key="terms", match=models.MatchValue(value=int(t))) for t in cols]
    )


def clause_filter(models: Any, clause: Any) -> Any:
    """Images holding every column of the clause, or of one of its alternatives (other spellings)."""
    alts = [_has_all(models, cols) for cols in (clause.terms, *clause.alternatives) if cols]
    return alts[0] if len(alts) == 1 else models.Filter(should=alts)


def query_filter(models: Any, filters: Any, where: Any = None, cameras: Any = None) -> Any | None:
    """The query's word filters (``lexsearch.search.parse.Filters``) and metadata conditions as one Qdrant
    filter, with the same meaning as ``lexsearch.search.candidates.apply_filters``: every +must clause,
    at least one of the query's words (``any_of``), none of the -exclude clauses."""
    must: list[Any] = [models.FieldCondition(key="status", match=models.MatchValue(value="ok"))]
    must_not: list[Any] = []
    if filters:
        must += [clause_filter(models, c) for c in filters.must]
        if filters.any_of is not None:
            must.append(models.Filter(should=[clause_filter(models, c) for c in filters.any_of]))
        must_not += [clause_filter(models, c) for c in filters.exclude]
    if where:
        must += where_conditions(models, where, cameras)
    return models.Filter(must=must, must_not=must_not or None)


def where_conditions(models: Any, where: Any, cameras: Any = None) -> list[Any]:
    """Metadata conditions (``lexsearch.collection.interface.Where``) as payload conditions, meaning what
    ``lexsearch.collection.embedded.where_sql`` means. A camera substring becomes the list of the
    collection's cameras that contain it (``cameras()``: its distinct ``camera`` values)."""
    out = []
    for c in where.conditions:
        if c.field == "taken" and c.op in ("gte", "lt", "lte"):
            rng = models.Range(**{c.op: taken_key(str(c.value))})
            out.append(models.FieldCondition(key="taken_key", range=rng))
        elif c.field == "camera" and c.op == "contains":
            hits = [v for v in (cameras() if cameras else []) if str(c.value).lower() in v]
            # MatchAny of nothing matches nothing, as a camera no image has should.
            out.append(models.FieldCondition(key="camera", match=models.MatchAny(any=hits or ["\x00"])))
        elif c.field == "folder" and c.op == "under":
            folder = path_payload(str(c.value).rstrip(os.sep) or os.sep)["path"]
            out.append(models.FieldCondition(key="folders", match=models.MatchValue(value=folder)))
        elif c.field == "folder" and c.op == "named":
            name = str(c.value).strip(os.sep).lower()
            out.append(models.FieldCondition(key="folder_names", match=models.MatchValue(value=name)))
        elif c.field == "orientation" and c.op == "eq":
            out.append(models.FieldCondition(key="orientation", match=models.MatchValue(value=str(c.value))))
        elif c.op == "eq":
            out.append(models.FieldCondition(key=c.field, match=models.MatchValue(value=c.value)))
        elif c.op == "in":
            out.append(models.FieldCondition(key=c.field, match=models.MatchAny(any=list(c.value))))
        elif c.op == "gte":
            out.append(models.FieldCondition(key=c.field, range=models.Range(gte=c.value)))
        elif c.op == "lte":
            out.append(models.FieldCondition(key=c.field, range=models.Range(lte=c.value)))
        else:
            raise ValueError(f"unknown condition {c.op!r}")
    return out
