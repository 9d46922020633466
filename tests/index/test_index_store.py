"""The collection store: schema and migrations, blob format, segments and tombstones, FAISS repair, cache."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest

from lexsearch.errors import CollectionNotFoundError
from lexsearch.index import postings as pf
from lexsearch.index.schema import SCHEMA_VERSION
from lexsearch.index.store import Changes, Collection, NewImage

META = {"model_id": "m", "vocab_hash": "v", "vocab_size": 50, "dense_dim": 4}


def new_image(i, rng):
    terms = np.sort(rng.choice(50, size=5, replace=False)).astype(np.uint32)
    dense = rng.standard_normal(4).astype(np.float32)
    weights = rng.random(5).astype(np.float32) + 0.01
    return NewImage(
        f"/x/{i}.png", 10, i, f"h{i}", terms=terms, weights=weights, dense=dense / np.linalg.norm(dense)
    )


@pytest.fixture
def col():
    c = Collection.open("s", readonly=False)
    c.bind_model(META, "lexsearch index ... --rebuild")
    yield c
    c.close()


def test_schema_is_made_by_named_migrations_in_wal_mode(col):
    names = [r[0] for r in col.db.execute("SELECT name FROM _sqlite_migrations")]
    assert names == [
        "m001_create_tables",
        "m002_segment_files",
        "m003_folder_digests",
        "m004_photo_metadata",
        "m005_perceptual_hash",
    ]
    assert set(col.db.table_names()) >= {
        "meta",
        "images",
        "forward",
        "postings",
        "tombstones",
        "query_cache",
        "segments",
        "dense_segments",
        "dense_dead",
        "folders",
    }
    assert col.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert col.db.execute("PRAGMA page_size").fetchone()[0] == 16384  # ten forward rows a page, not two
    assert col.meta["schema"] == SCHEMA_VERSION and col.meta["model_id"] == "m"


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
    for start in range(0, 40, 2):  # 20 commits of 2 images, all in the SQLite delta
        col.apply(Changes(insert=[new_image(i, rng) for i in range(start, start + 2)]))
    rows = col.db.execute("SELECT count(*), max(n) FROM postings").fetchone()
    assert rows[0] <= 50 * 20 and rows[1] > 1  # blobs, not a row per posting
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
    assert col.db.execute("SELECT count(*) FROM postings").fetchone()[0] == 0  # all in one file now


def test_delta_flushes_into_tiered_files_and_tombstones_are_masked_until_merged(col, monkeypatch):
    monkeypatch.setattr(Collection, "flush_at", 40)  # ~8 images per file
    monkeypatch.setattr(Collection, "fanout", 3)
    rng = np.random.default_rng(3)
    for start in range(0, 120, 4):
        col.apply(Changes(insert=[new_image(i, rng) for i in range(start, start + 4)]))
        assert col.verify() == []
    files = col.db.execute("SELECT name, n, min_id, max_id FROM segments ORDER BY min_id").fetchall()
    assert 1 < len(files) < 12  # flushed, and merged by tiers (30 commits would be 15 files unmerged)
    assert all(a[3] < b[2] for a, b in zip(files, files[1:]))  # disjoint ascending id ranges
    assert {f.name for f in col.path.iterdir() if f.suffix == ".lxp"} == {r[0] for r in files}
    written = col.meta["postings_written"]
    assert written == 120 * 5 and col.meta["postings_rewritten"] <= 4 * written
    # Removing images in files: the snapshot lists them as dead, live postings leave them out.
    victims = [2, 50, 119]
    col.apply(Changes(remove=victims))
    snap = col.postings_snapshot(range(50))
    assert set(victims) <= set(snap.dead.tolist())
    assert not set(victims) & set(np.concatenate([i for i, _ in snap.live().values()]).tolist())
    assert col.verify() == []
    # A reader that opened before a merge keeps reading its mapped files after they are retired.
    with Collection.open("s") as reader:
        before = reader.postings(range(50))
        for start in range(120, 200, 4):
            col.apply(Changes(insert=[new_image(i, rng) for i in range(start, start + 4)]))
        assert {k: v[0].tolist() for k, v in reader.postings(range(50)).items()} != {
            k: v[0].tolist() for k, v in before.items()
        }  # a newer snapshot after the files changed
        assert reader.verify() == []
    # Enough removals: the files are rewritten without them and the tombstones go.
    col.apply(Changes(remove=list(range(1, 80))))
    col.purge_tombstones()
    assert col.db.execute("SELECT count(*) FROM tombstones").fetchone()[0] == 0
    assert col.verify() == []


def test_orphan_and_damaged_files_are_repaired_by_the_writer(col, monkeypatch):
    monkeypatch.setattr(Collection, "flush_at", 30)
    rng = np.random.default_rng(4)
    for start in range(0, 40, 4):
        col.apply(Changes(insert=[new_image(i, rng) for i in range(start, start + 4)]))
    (col.path / "postings-99999999.lxp.tmp").write_bytes(b"half")  # a crash while writing a file
    (col.path / "postings-99999998.lxp").write_bytes(b"never committed")
    name = col.db.execute("SELECT name FROM segments").fetchone()[0]
    col.close()
    (col.path / name).write_bytes(b"torn")
    with pytest.raises(Exception, match="damaged"):
        Collection.open("s").postings(range(50))
    with Collection.open("s", readonly=False) as w:
        assert w.verify() == []
        assert not (w.path / "postings-99999999.lxp.tmp").exists()
        assert not (w.path / "postings-99999998.lxp").exists()


def test_forward_rows_are_compact(col):
    rng = np.random.default_rng(5)
    col.apply(Changes(insert=[new_image(0, rng)]))
    terms, weights, dense = col.db.execute("SELECT terms, weights, dense FROM forward").fetchone()
    assert len(terms) == 2 * 5 and len(weights) == 2 * 5 and len(dense) == 2 * 4  # uint16, float16, float16
    assert pf.decode_forward(pf.encode_ids(np.array([3, 70000])), pf.encode_weights(np.ones(2)))[
        0
    ].tolist() == [3, 70000]  # rows of the uint32 width read alike


def test_forward_block_reads_rows_and_vectors_in_the_order_asked(col):
    rng = np.random.default_rng(8)
    ids = col.apply(Changes(insert=[new_image(i, rng) for i in range(6)]))
    ask = [ids[4], 999_999, ids[0], ids[2]]  # out of order, one id with no row
    block = col.forward_block(ask)
    fwd, vecs = col.forward(ask), col.dense_vectors(ask)
    assert block.indptr.tolist() == [0, 5, 5, 10, 15] and block.has_dense.tolist() == [
        True,
        False,
        True,
        True,
    ]
    for k, i in enumerate(ask):
        a, b = block.indptr[k], block.indptr[k + 1]
        if i in fwd:
            assert np.array_equal(block.terms[a:b], fwd[i][0]) and np.allclose(block.weights[a:b], fwd[i][1])
            assert np.array_equal(block.dense[k], vecs[i])
        else:
            assert a == b and not block.dense[k].any()
    assert col.forward_block(ask, dense=False).dense is None
    # The warm server's cache answers the same, on a first read and from memory
    from lexsearch.serve.service import WarmCollection

    warm = WarmCollection(col)
    for _ in range(2):
        w = warm.forward_block(ask)
        assert np.array_equal(w.indptr, block.indptr) and np.array_equal(w.terms, block.terms)
        assert np.array_equal(w.weights, block.weights) and np.array_equal(w.dense, block.dense)
        assert np.array_equal(w.has_dense, block.has_dense)
    assert set(warm._rows) == set(ask)  # held in memory (the id with no row as "none")


def test_a_readers_many_row_reads_share_threads_kept_until_close(col):
    import threading

    from lexsearch.index import readers

    rng = np.random.default_rng(9)
    ids = col.apply(Changes(insert=[new_image(i, rng) for i in range(readers._PARALLEL_MIN_ROWS + 40)]))
    before = set(threading.enumerate())

    def settled():
        """The pool's threads once each has run its initializer: a thread the pool started for the last
        task may still be opening its connection when the read returns (seen on a loaded machine)."""
        deadline = time.monotonic() + 10.0
        while True:
            threads = {t for t in threading.enumerate() if t.name.startswith("lexsearch-read")} - before
            if len(reader._reader_conns) == len(threads) or time.monotonic() > deadline:
                return threads
            time.sleep(0.01)

    reader = Collection.open(col.path)
    first = reader.forward_block(ids[::-1])
    threads = settled()
    conns = list(reader._reader_conns)
    assert 1 <= len(threads) <= readers._READERS and len(conns) == len(threads)
    # More reads: the threads stay (up to _READERS of them, each with its own connection), and a row written
    # since is seen (each read its own snapshot).
    (new,) = col.apply(Changes(insert=[new_image(999, rng)]))
    for _ in range(5):
        again = reader.forward_block([*ids[::-1], new])
    kept = settled()
    assert threads <= kept and len(kept) <= readers._READERS
    assert reader._reader_conns[: len(conns)] == conns and len(reader._reader_conns) == len(kept)
    assert (
        np.array_equal(again.terms[: first.terms.size], first.terms) and again.indptr[-1] > first.indptr[-1]
    )
    assert np.array_equal(first.terms, col.forward_block(ids[::-1]).terms)  # as the writer's one connection
    reader.close()
    assert not any(t.is_alive() for t in kept) and reader._reader_conns == []


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
    assert ids[0] == 4 and scores[0] == pytest.approx(1.0, abs=2e-3)
    assert np.allclose(col.dense_scores(q, np.array([4, 99])), [1.0, 0.0], atol=2e-3)
    # The files lag behind (a kill after a commit): a reader adds the newer vectors and drops removed ones.
    col.apply(Changes(insert=[new_image(10, rng)], remove=[4]))
    with Collection.open("s") as reader:
        assert reader.meta["faiss_generation"] != reader.meta["generation"]
        assert reader.verify() == []
        assert 4 not in reader.dense_search(q, 20)[0]
    # A small change appends a file, never rewrites the others.
    first = col.db.execute("SELECT name FROM dense_segments").fetchone()[0]
    mtime = (col.path / first).stat().st_mtime_ns
    col.save_dense()
    files = [r[0] for r in col.db.execute("SELECT name FROM dense_segments ORDER BY min_id")]
    assert files[0] == first and len(files) == 2 and (col.path / first).stat().st_mtime_ns == mtime
    with Collection.open("s") as reader:
        assert reader.verify() == [] and reader.dense_search(q, 50)[0].size == 10
    # Missing or torn files are rebuilt from forward.dense.
    (col.path / files[0]).unlink()
    with Collection.open("s") as reader:
        assert reader.verify() == [] and reader.dense_search(q, 50)[0].size == 10
    (col.path / files[0]).write_bytes(b"garbage")
    with Collection.open("s") as reader:
        assert reader.verify() == []


def test_a_damaged_dense_file_is_rewritten_by_the_next_save_and_queries_stop_warning(
    col, caplog, monkeypatch
):
    """A reader works around a damaged FAISS file (with a warning, every time); the writer's next save (each
    index run ends with one) rewrites the files from forward.dense, after which nothing warns."""
    rng = np.random.default_rng(3)
    col.apply(Changes(insert=[new_image(i, rng) for i in range(6)]))
    col.save_dense()
    col.apply(Changes(insert=[new_image(i, rng) for i in range(6, 9)]))
    col.save_dense()
    files = [r[0] for r in col.db.execute("SELECT name FROM dense_segments ORDER BY min_id")]
    assert len(files) == 2
    q = col.dense_vectors([2])[2]

    def query_warnings() -> list[str]:
        caplog.clear()
        with Collection.open("s") as reader:
            ids, _ = reader.dense_search(q, 20)
            assert ids[0] == 2 and ids.size == 9  # answered either way
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

    assert query_warnings() == []
    for damage in ("truncate", "same size", "missing"):
        path = col.path / files[0]
        data = path.read_bytes()
        if damage == "truncate":
            path.write_bytes(data[: len(data) // 3])
        elif damage == "same size":  # a stat that differs from the one recorded makes the writer read it
            path.write_bytes(b"\0" * len(data))
        else:
            path.unlink()
        if damage != "missing":  # (a missing file is rebuilt in memory without a word)
            assert query_warnings() and query_warnings(), damage  # every query, until the next save
        before = set(os.listdir(col.path))
        col.save_dense()
        files = [r[0] for r in col.db.execute("SELECT name FROM dense_segments ORDER BY min_id")]
        assert len(files) == 1 and files[0] not in before, damage  # one file, written anew
        assert query_warnings() == [], damage
        with Collection.open("s") as reader:
            assert reader.verify() == []
    # A sound file is not read again by later saves (its stat is the one recorded), nor rewritten.
    from lexsearch.index import dense as dn

    mtime = (col.path / files[0]).stat().st_mtime_ns
    monkeypatch.setattr(dn, "read_index", lambda *a, **k: pytest.fail("a sound file was read"))
    col.save_dense()
    assert [r[0] for r in col.db.execute("SELECT name FROM dense_segments")] == files
    assert (col.path / files[0]).stat().st_mtime_ns == mtime


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


def test_segment_files_hold_common_terms_as_dense_columns(tmp_path):
    from lexsearch.index import segments as sg

    rng = np.random.default_rng(6)
    per_term = {}
    for t, frac in ((3, 0.9), (7, 0.5), (11, 0.05), (12, 0.001)):  # two common terms, two rare ones
        ids = np.flatnonzero(rng.random(1000) < frac).astype(np.uint32) + 100
        if ids.size:
            per_term[t] = (ids, (rng.random(ids.size) * 0.9 + 0.05).astype(np.float16))
    runs = sg.Runs.from_dict(per_term)
    size = sg.write_segment(tmp_path / "postings-00000001.lxp", runs)
    f = sg.SegmentFile(tmp_path / "postings-00000001.lxp")
    assert f.part(3).dense and f.part(7).dense and not f.part(11).dense
    assert size < 6 * runs.n + 1024  # columns are no larger than the postings they replace
    for t, (ids, w) in per_term.items():
        got_ids, got_w = f.get(t)
        assert np.array_equal(got_ids, ids) and np.array_equal(got_w, w)
        assert f.part(t).df == ids.size and f.part(t).max_weight == pytest.approx(float(w.max()))
    back = f.runs()  # what a merge reads: every posting, columns expanded
    assert np.array_equal(back.terms, runs.terms) and np.array_equal(back.ids, runs.ids)
    assert f.get(99) is None and f.part(99) is None
    # Many terms at once (a query's): the same parts, the terms it lacks left out (below, between, above).
    asked = [0, 3, 5, 7, 11, 12, 99]
    many = f.parts(asked)
    assert sorted(many) == sorted(per_term)
    for t, p in many.items():
        one = f.part(t)
        assert (p.dense, p.start, p.df, p.max_weight) == (one.dense, one.start, one.df, one.max_weight)
        assert np.array_equal(p.weights, one.weights)
    assert f.parts([]) == {}


def test_columns_are_uint16_codes_that_keep_every_weight_present(tmp_path):
    from lexsearch.index import segments as sg

    ids = np.arange(100, 1100, dtype=np.uint32)
    w = np.full(ids.size, 0.5, np.float16)
    w[::7] = 1e-5  # far below one step of the column's largest weight: must not round to "absent"
    w[3] = 0.999
    sg.write_segment(tmp_path / "postings-00000001.lxp", sg.Runs.from_dict({5: (ids, w)}))
    f = sg.SegmentFile(tmp_path / "postings-00000001.lxp")
    part = f.part(5)
    assert part.dense and part.weights.dtype == np.uint16 and part.scale == pytest.approx(0.999 / 65535, 1e-3)
    got_ids, got_w = f.get(5)
    assert np.array_equal(got_ids, ids)  # every posting still there, the tiny ones included
    assert np.allclose(got_w.astype(np.float32), w.astype(np.float32), atol=part.scale)
    assert np.array_equal(got_w[w > 0.01], w[w > 0.01])  # float16 values survive the codes exactly


def _write_format_2(path, runs):
    """A segment file as format 2 wrote it (float16 columns, no scale array): collections made before."""
    from lexsearch.index import segments as sg

    sg.write_segment(path, runs)
    f = sg.SegmentFile(path)
    nt = f.terms.size
    blob = bytearray(path.read_bytes())
    head = sg.HEADER_BYTES
    table_end = head + nt * 24 + 8
    columns = [
        np.where(f.dense[k] > 0, f.dense[k] * f.scale[np.flatnonzero(f.slot == k)[0]], 0).astype("<f2")
        for k in range(f.dense.shape[0])
    ]
    sparse = bytes(blob[sg._align8(table_end + 4 * nt) : f._dense_off])
    out = bytes(blob[:head]).replace(sg.MAGIC, sg.MAGIC_V2) + bytes(blob[head:table_end])
    out += b"\0" * (sg._align8(len(out)) - len(out)) + sparse
    out = out.ljust(sg._align8(len(out)), b"\0") + b"".join(c.tobytes() for c in columns)
    path.write_bytes(out)


def test_format_2_segment_files_are_still_read(tmp_path):
    from lexsearch.index import segments as sg

    rng = np.random.default_rng(2)
    per_term = {}
    for t, frac in ((3, 0.9), (11, 0.05)):  # one column, one sparse list
        ids = np.flatnonzero(rng.random(1000) < frac).astype(np.uint32)
        per_term[t] = (ids, (rng.random(ids.size) * 0.9 + 0.05).astype(np.float16))
    path = tmp_path / "postings-00000001.lxp"
    _write_format_2(path, sg.Runs.from_dict(per_term))
    f = sg.SegmentFile(path)
    assert f.scale is None and f.part(3).dense and f.part(3).scale is None
    assert f.part(3).weights.dtype == np.float16
    for t, (ids, w) in per_term.items():
        got_ids, got_w = f.get(t)
        assert np.array_equal(got_ids, ids) and np.array_equal(got_w, w)
    # ... and scored like a format-3 column (the query path's kernel over both kinds of file)
    from lexsearch.search.candidates import _accumulate_parts

    scores, tmp = np.zeros(1000, np.float32), np.zeros(1000, np.float32)
    _accumulate_parts(scores, tmp, [f.part(3)], np.float32(2.0))
    ids, w = per_term[3]
    assert np.allclose(scores[ids], 2 * w.astype(np.float32)) and scores.sum() == pytest.approx(
        2 * w.astype(np.float64).sum(), rel=1e-5
    )


def test_a_schema_1_collection_is_upgraded_in_place(tmp_path, monkeypatch):
    """Schema 1 kept every posting in SQLite blobs and one dense.faiss: the upgrade keeps them as delta,
    flushes them into files with the next commits, and rebuilds the FAISS side from the forward rows."""
    import json
    import sqlite3

    from sqlite_utils import Database

    from lexsearch.index import schema

    path = tmp_path / "old"
    path.mkdir()
    conn = sqlite3.connect(path / "index.db")
    db = Database(conn)
    schema.m001_create_tables(db)
    conn.execute(
        "CREATE TABLE _sqlite_migrations (id INTEGER PRIMARY KEY, migration_set TEXT, name TEXT, "
        "applied_at TEXT)"
    )
    conn.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES "
        "('lexsearch.index', 'm001_create_tables', 'then')"
    )
    meta = dict(META, schema=1, postings_format=1, generation=3, faiss_generation=3)
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
    rng = np.random.default_rng(8)
    rows = {i: new_image(i, rng) for i in range(1, 13)}
    for i, im in rows.items():
        conn.execute(
            "INSERT INTO images (id, path, size, mtime_ns, hash, status) VALUES (?, ?, 1, 1, ?, 'ok')",
            [i, im.path, im.hash],
        )
        conn.execute(
            "INSERT INTO forward VALUES (?, ?, ?, ?)",
            [
                i,
                pf.encode_ids(im.terms),
                pf.encode_weights(im.weights),
                np.asarray(im.dense, "<f4").tobytes(),
            ],
        )
    inverted = pf.invert(np.arange(1, 13, dtype=np.uint32), [(rows[i].terms, rows[i].weights) for i in rows])
    for t, (ids, w) in inverted.items():  # a base segment and a delta segment, as schema 1 wrote them
        for seg, keep in ((0, ids <= 8), (1, ids > 8)):
            if keep.any():
                conn.execute(
                    "INSERT INTO postings VALUES (?, ?, ?, ?, ?)",
                    [t, seg, int(keep.sum()), pf.encode_ids(ids[keep]), pf.encode_weights(w[keep])],
                )
    conn.execute("DELETE FROM images WHERE id = 4")
    conn.execute("DELETE FROM forward WHERE image_id = 4")
    conn.execute("INSERT INTO tombstones VALUES (4, ?)", [pf.encode_ids(rows[4].terms)])
    conn.commit()
    conn.close()
    with pytest.raises(Exception, match="needs an upgrade"):
        Collection.open(path)
    monkeypatch.setattr(Collection, "flush_at", 60)
    with Collection.open(path, readonly=False) as col:
        assert col.meta["schema"] == SCHEMA_VERSION and col.meta["delta_postings"] > 0
        assert col.verify() == []
        assert 4 not in set(np.concatenate([i for i, _ in col.postings(range(50)).values()]).tolist())
        col.apply(Changes(insert=[new_image(i, rng) for i in range(100, 110)]))  # flushes the old blobs too
        assert col.db.execute("SELECT count(*) FROM segments").fetchone()[0] >= 1
        col.purge_tombstones()
        col.save_dense()
        assert col.verify() == []
        q = col.dense_vectors([5])[5]
        assert col.dense_search(q, 1)[0][0] == 5


def test_rows_in_folders_reads_only_the_files_directly_in_each_folder(col):
    import os

    from lexsearch.index.paths import folder_digest

    latin1 = os.fsdecode(b"caf\xe9")  # a name that is not UTF-8, as Python hands it over
    paths = [
        "/p/a.jpg",
        "/p/z.jpg",
        "/p/sub/b.jpg",
        "/p/sub/deep/c.jpg",
        "/p/sub-x/d.jpg",
        "/p/sub0/e.jpg",
        f"/p/{latin1}.jpg",
        f"/p/{latin1}/f.jpg",
        f"/p/sub/{latin1}.jpg",
        "/p0/g.jpg",
        "/q.jpg",
    ]
    rng = np.random.default_rng(3)
    images = []
    for k, p in enumerate(paths):
        im = new_image(k, rng)
        im.path = p
        images.append(im)
    col.apply(Changes(insert=images))
    assert col.verify() == []
    by = {os.path.dirname(p) for p in paths}
    assert set(col.folder_states()) == by and all(s.digest is None for s in col.folder_states().values())
    for folder in sorted(by):
        got = col.rows_in_folders([folder])
        assert sorted(got) == sorted(p for p in paths if os.path.dirname(p) == folder), folder
        assert all(r.path == p for p, r in got.items())
    assert sorted(col.rows_in_folders(["/p", "/p/sub"])) == sorted(
        p for p in paths if os.path.dirname(p) in ("/p", "/p/sub")
    )
    listing = {p: r for p, r in col.rows_in_folders(["/p/sub"]).items()}
    digest = folder_digest((os.path.basename(p), r.size, r.mtime_ns) for p, r in listing.items())
    assert col.seal_folders({"/p/sub": digest, "/p": b"not the digest"}) == 1
    states = col.folder_states()
    assert states["/p/sub"] == (digest, 2, 0) and states["/p"].digest is None
    assert col.verify() == []
    col.apply(Changes(remove=[listing["/p/sub/b.jpg"].id]))
    assert col.folder_states()["/p/sub"].digest is None  # the write cleared it in the same transaction


def test_a_schema_2_collection_is_read_as_is_and_upgraded_by_the_next_writer(tmp_path):
    import sqlite3

    path = tmp_path / "v2"
    rng = np.random.default_rng(4)
    with Collection.open(path, readonly=False) as c:
        c.bind_model(META, "rebuild")
        c.apply(Changes(insert=[new_image(i, rng) for i in range(5)]))
    conn = sqlite3.connect(path / "index.db")  # as schema 2 left it: no folders table
    conn.execute("DROP TABLE folders")
    conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm003_folder_digests'")
    conn.commit()
    conn.close()
    with Collection.open(path) as c:  # a reader does not need the folders: no upgrade asked for
        assert c.count() == 5 and c.verify() == []
    with Collection.open(path, readonly=False) as c:
        assert c.meta["schema"] == SCHEMA_VERSION
        assert c.folder_states() == {"/x": (None, 0, 0)}
        assert c.verify() == []
