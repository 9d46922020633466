"""The collection store: schema and migrations, blob format, segments and tombstones, FAISS repair, cache."""

from __future__ import annotations

import numpy as np
import pytest

from lexsearch.errors import CollectionNotFoundError
from lexsearch.index import postings as pf
from lexsearch.index.store import MAX_SEGMENTS, Changes, Collection, NewImage

META = {"model_id": "m", "vocab_hash": "v", "vocab_size": 50, "dense_dim": 4}


def new_image(i, rng):
    terms = np.sort(rng.choice(50, size=5, replace=False)).astype(np.uint32)
    dense = rng.standard_normal(4).astype(np.float32)
    weights = rng.random(5).astype(np.float32) + 0.01
    return NewImage(f"/x/{i}.png", 10, i, f"h{i}", terms=terms, weights=weights, dense=dense / np.linalg.norm(dense))


@pytest.fixture
def col():
    c = Collection.open("s", readonly=False)
    c.bind_model(META, "lexsearch index ... --rebuild")
    yield c
    c.close()


def test_schema_is_made_by_named_migrations_in_wal_mode(col):
    names = [r[0] for r in col.db.execute("SELECT name FROM _sqlite_migrations")]
    assert names == ["m001_create_tables"]
    assert set(col.db.table_names()) >= {"meta", "images", "forward", "postings", "tombstones", "query_cache"}
    assert col.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert col.meta["schema"] == 1 and col.meta["model_id"] == "m"


def test_missing_collection_is_a_clear_error():
    with pytest.raises(CollectionNotFoundError, match="lexsearch index"):
        Collection.open("nope")


def test_blob_round_trip():
    ids = np.array([1, 5, 70000], np.uint32)
    w = np.array([0.5, 0.0123, 1.0], np.float32)
    assert len(pf.encode_ids(ids)) == 12 and len(pf.encode_weights(w)) == 6  # 6 bytes per posting
    assert np.array_equal(pf.decode_ids(pf.encode_ids(ids)), ids)
    assert np.allclose(pf.decode_weights(pf.encode_weights(w)), w, rtol=1e-3)


def test_postings_are_per_term_blobs_with_segments_and_tombstones(col):
    rng = np.random.default_rng(0)
    for start in range(0, 40, 2):  # 20 commits of 2 images
        col.apply(Changes(insert=[new_image(i, rng) for i in range(start, start + 2)]))
    rows = col.db.execute("SELECT count(*), max(n) FROM postings").fetchone()
    assert rows[0] <= 50 * MAX_SEGMENTS and rows[1] > 1  # blobs, not a row per posting
    assert col.verify() == []
    col.apply(Changes(remove=[3, 7, 8]))
    assert col.db.execute("SELECT count(*) FROM tombstones").fetchone()[0] == 3
    got = col.postings(range(50))
    assert not {3, 7, 8} & set(np.concatenate([ids for ids, _ in got.values()]).tolist())
    assert all(np.all(np.diff(ids.astype(np.int64)) > 0) for ids, _ in got.values())
    assert col.verify() == []
    assert col.purge_tombstones() == 3
    assert col.db.execute("SELECT count(*) FROM tombstones").fetchone()[0] == 0
    assert col.verify() == [] and col.postings(range(50)).keys() == got.keys()
    col.rebuild_postings()
    assert col.verify() == []


def test_ids_are_never_reused(col):
    rng = np.random.default_rng(1)
    col.apply(Changes(insert=[new_image(0, rng), new_image(1, rng)]))
    col.apply(Changes(remove=[2]))
    (new_id,) = col.apply(Changes(insert=[new_image(2, rng)]))
    assert new_id == 3 and col.max_image_id == 3


def test_dense_index_is_repaired_when_stale_missing_or_corrupt(col):
    rng = np.random.default_rng(2)
    col.apply(Changes(insert=[new_image(i, rng) for i in range(10)]))
    col.save_dense()
    q = col.dense_vectors([4])[4]
    ids, scores = col.dense_search(q, 3)
    assert ids[0] == 4 and scores[0] == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(col.dense_scores(q, np.array([4, 99])), [1.0, 0.0], atol=1e-5)
    # The file lags behind (a kill after a commit): a reader syncs it in memory by id diff.
    col.apply(Changes(insert=[new_image(10, rng)], remove=[4]))
    with Collection.open("s") as reader:
        assert reader.meta["faiss_generation"] != reader.meta["generation"]
        assert reader.verify() == []
        assert 4 not in reader.dense_search(q, 20)[0]
    # Missing or torn files are rebuilt from forward.dense.
    (col.path / "dense.faiss").unlink()
    with Collection.open("s") as reader:
        assert reader.verify() == [] and reader.dense_search(q, 50)[0].size == 10
    (col.path / "dense.faiss").write_bytes(b"garbage")
    with Collection.open("s") as reader:
        assert reader.verify() == []


def test_query_cache(col):
    from scipy.sparse import csr_matrix

    assert col.cached_query("white horse") is None
    row = np.zeros(50, np.float32)
    row[[3, 9]] = [0.6, 0.8]
    col.cache_query("white horse", csr_matrix(row), np.ones(4, np.float32) / 2)
    hit = col.cached_query("white horse")
    assert hit.sparse.shape == (1, 50) and np.allclose(hit.sparse.toarray()[0], row, atol=1e-3)
    assert hit.dense.shape == (1, 4)
    col.cache_query("no dense", row, None)
    assert col.cached_query("no dense").dense is None
