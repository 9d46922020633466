"""The incremental build: unchanged / moved / changed / removed files, bad input, EXIF, HEIC, the guard."""

from __future__ import annotations

import os
import shutil
import struct
import zlib

import numpy as np
import pytest
from fakes import FakeEncoder, make_image, make_images
from PIL import Image

from lexsearch.errors import CollectionBusyError, ModelMismatchError, UsageError
from lexsearch.index import Collection, IndexOptions, Reporter, build_index
from lexsearch.index import build as build_mod


def run(root, enc=None, name="c", **opts):
    enc = enc or FakeEncoder()
    with Collection.open(name, readonly=False) as col:
        warnings: list[tuple[str, str]] = []
        summary = build_index(
            root if isinstance(root, list) else [root],
            enc,
            col,
            IndexOptions(batch_size=4, **opts),
            Reporter(on_warning=lambda p, r: warnings.append((p, r))),
        )
        assert col.verify() == []
    return summary, warnings


def ids_by_name(name="c"):
    with Collection.open(name) as col:
        return {os.path.basename(r.path): r.id for r in col.rows()}


def test_first_run_indexes_everything_and_the_store_agrees(tmp_path):
    make_images(tmp_path / "photos", 10)
    summary, warnings = run(tmp_path / "photos")
    assert (summary.indexed, summary.unchanged, summary.failed, warnings) == (10, 0, 0, [])
    with Collection.open("c") as col:
        assert col.count() == 10 and col.max_image_id == 10
        assert col.meta["model_id"] == "fake-model-1" and col.meta["dense_dim"] == 8
        fwd = col.forward(range(1, 11))
        assert len(fwd) == 10 and all(t.dtype == np.int32 and w.dtype == np.float32 for t, w in fwd.values())
        assert sorted(col.image_paths([1, 2])) == [1, 2]
        assert col.db.execute("SELECT count(*) FROM dense_segments").fetchone()[0] == 1


def test_unchanged_files_are_not_decoded(tmp_path, monkeypatch):
    make_images(tmp_path / "photos", 8)
    run(tmp_path / "photos")

    def no_decode(*a, **k):
        raise AssertionError("an unchanged file was decoded")

    monkeypatch.setattr(build_mod, "load_image", no_decode)
    enc = FakeEncoder()
    summary, _ = run(tmp_path / "photos", enc)
    assert (summary.unchanged, summary.indexed, enc.images_seen) == (8, 0, 0)
    # A touched file (new mtime, same bytes) is recognised by its hash: stat updated, still no decode.
    p = tmp_path / "photos" / "img_00003.png"
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    summary, _ = run(tmp_path / "photos", enc)
    assert (summary.unchanged, summary.indexed, enc.images_seen) == (8, 0, 0)
    summary, _ = run(tmp_path / "photos", enc)
    assert summary.unchanged == 8


def test_moved_file_keeps_its_id_and_vectors(tmp_path, monkeypatch):
    make_images(tmp_path / "photos", 6)
    run(tmp_path / "photos")
    before = ids_by_name()
    with Collection.open("c") as col:
        vec = col.forward([before["img_00002.png"]])[before["img_00002.png"]]
    (tmp_path / "photos" / "new").mkdir()
    os.replace(tmp_path / "photos" / "img_00002.png", tmp_path / "photos" / "new" / "renamed.png")
    monkeypatch.setattr(build_mod, "load_image", lambda *a, **k: pytest.fail("a moved file was decoded"))
    summary, _ = run(tmp_path / "photos")
    assert (summary.moved, summary.indexed, summary.removed, summary.unchanged) == (1, 0, 0, 5)
    after = ids_by_name()
    assert after["renamed.png"] == before["img_00002.png"] and "img_00002.png" not in after
    with Collection.open("c") as col:
        t, w = col.forward([after["renamed.png"]])[after["renamed.png"]]
        assert np.array_equal(t, vec[0]) and np.array_equal(w, vec[1])


def test_deleted_and_changed_files(tmp_path):
    make_images(tmp_path / "photos", 6)
    run(tmp_path / "photos")
    before = ids_by_name()
    (tmp_path / "photos" / "img_00001.png").unlink()
    changed = tmp_path / "photos" / "img_00004.png"
    make_image(changed, 1234, size=(50, 20))
    os.utime(changed, ns=(1, changed.stat().st_mtime_ns + 10**9))
    enc = FakeEncoder()
    summary, _ = run(tmp_path / "photos", enc)
    assert (summary.indexed, summary.removed, summary.unchanged, enc.images_seen) == (1, 1, 4, 1)
    after = ids_by_name()
    assert "img_00001.png" not in after
    assert after["img_00004.png"] > max(before.values())  # a changed file gets a fresh id; old one is dead
    with Collection.open("c") as col:
        assert col.count() == 5
        live = set(np.concatenate([ids for ids, _ in col.postings(range(100)).values()]).tolist())
        assert live == set(after.values())
        assert not col.db.execute("SELECT count(*) FROM tombstones").fetchone()[0]  # purged at the end


def test_several_roots_feed_one_collection(tmp_path):
    make_images(tmp_path / "a", 3)
    make_images(tmp_path / "b", 2, start=10)
    run(tmp_path / "a")
    summary, _ = run(tmp_path / "b")
    assert summary.indexed == 2
    summary, _ = run(tmp_path / "a")  # re-indexing root a must not remove root b's images
    assert (summary.unchanged, summary.removed) == (3, 0)
    with Collection.open("c") as col:
        assert col.count() == 5
        assert sorted(col.meta["roots"]) == sorted([str(tmp_path / "a"), str(tmp_path / "b")])


def test_missing_root_is_an_error_not_a_mass_delete(tmp_path):
    make_images(tmp_path / "photos", 2)
    run(tmp_path / "photos")
    with pytest.raises(UsageError, match="no such"):
        run(tmp_path / "unmounted")
    with Collection.open("c") as col:
        assert col.count() == 2


def _huge_png(path, w=100_000, h=100_000):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 10))
        + chunk(b"IEND", b"")
    )


def test_folder_of_broken_files(tmp_path):
    d = tmp_path / "broken"
    d.mkdir()
    make_image(d / "good.png", 1)
    (d / "zero.jpg").write_bytes(b"")
    make_image(d / "full.jpg", 2, size=(200, 150), fmt="JPEG")
    data = (d / "full.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "full.jpg").unlink()
    (d / "text.jpg").write_text("this is not a picture\n")
    _huge_png(d / "huge.png")
    summary, warnings = run(d)
    assert (summary.indexed, summary.failed) == (1, 4)
    reasons = {os.path.basename(p): r for p, r in warnings}
    assert set(reasons) == {"zero.jpg", "truncated.jpg", "text.jpg", "huge.png"}  # one warning each
    assert "empty" in reasons["zero.jpg"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "not an image" in reasons["text.jpg"]
    assert reasons["huge.png"].startswith("too large") and "10000000000 pixels" in reasons["huge.png"]
    with Collection.open("c") as col:
        assert dict(col.failures()).keys() == {str(d / n) for n in reasons}
        assert col.count("failed") == 4 and col.count() == 1
    # Unchanged broken files are not retried (nor warned about) on the next run.
    summary, warnings = run(d)
    assert (summary.failed, summary.failed_before, summary.unchanged, warnings) == (0, 4, 1, [])
    # A broken file that gets fixed is indexed.
    make_image(d / "text.jpg", 7, fmt="JPEG")
    summary, _ = run(d)
    assert (summary.indexed, summary.failed_before) == (1, 3)


def test_unreadable_file(tmp_path, monkeypatch):
    make_images(tmp_path / "p", 2)
    real_hash = build_mod.content_hash

    def hash_or_deny(path, size=None):  # chmod 000 does not stop root, so simulate the denial
        if str(path).endswith("img_00000.png"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_hash(path, size)

    monkeypatch.setattr(build_mod, "content_hash", hash_or_deny)
    summary, warnings = run(tmp_path / "p")
    assert summary.failed == 1 and "permission" in warnings[0][1]


def test_megapixel_guard(tmp_path):
    (tmp_path / "p").mkdir()
    make_image(tmp_path / "p" / "big.png", 1, size=(40, 30))
    summary, warnings = run(tmp_path / "p", max_megapixels=0.001)  # 1,000 pixels; the image has 1,200
    assert summary.failed == 1 and "megapixel guard" in warnings[0][1]


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # stored: left half red, right half blue
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    exif[306] = "2021:05:04 10:11:12"
    (tmp_path / "p").mkdir()
    Image.fromarray(arr).save(tmp_path / "p" / "rot.jpg", exif=exif, quality=95)
    image, facts = build_mod.load_image(str(tmp_path / "p" / "rot.jpg"), max_pixels=10**8)
    assert image.size == (20, 40) and (facts["width"], facts["height"]) == (20, 40)
    top, bottom = np.asarray(image)[2, 10], np.asarray(image)[37, 10]
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200  # left (red) became the top
    run(tmp_path / "p")
    with Collection.open("c") as col:
        row = col.db.execute("SELECT width, height, exif_time FROM images").fetchone()
    assert row == (20, 40, "2021:05:04 10:11:12")


def test_formats_including_heic(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    d = tmp_path / "p"
    d.mkdir()
    for i, (ext, fmt) in enumerate(
        [
            (".jpg", "JPEG"),
            (".webp", "WEBP"),
            (".gif", "GIF"),
            (".bmp", "BMP"),
            (".tiff", "TIFF"),
            (".png", "PNG"),
        ]
    ):
        make_image(d / f"x{i}{ext}", i, fmt=fmt)
    Image.fromarray(np.full((30, 40, 4), 200, np.uint8), "RGBA").save(d / "alpha.png")
    pillow_heif.register_heif_opener()
    make_image(d / "phone.heic", 42, fmt="HEIF")
    summary, warnings = run(d)
    assert warnings == [] and summary.indexed == 8


def test_model_mismatch_is_refused_with_the_rebuild_command(tmp_path):
    make_images(tmp_path / "p", 2)
    run(tmp_path / "p", FakeEncoder(model_id="model-a"))
    with pytest.raises(ModelMismatchError, match="--rebuild"):
        run(tmp_path / "p", FakeEncoder(model_id="model-b"))
    with Collection.open("c", readonly=False, recreate=True) as col:
        build_index([tmp_path / "p"], FakeEncoder(model_id="model-b"), col)
        assert col.meta["model_id"] == "model-b" and col.count() == 2


def test_one_writer_at_a_time(tmp_path):
    with Collection.open("c", readonly=False):
        with pytest.raises(CollectionBusyError):
            Collection.open("c", readonly=False)
        with Collection.open("c") as reader:  # readers are never blocked
            assert reader.count() == 0


def test_many_commits_keep_segments_bounded(tmp_path):
    make_images(tmp_path / "p", 60)
    from lexsearch.index.store import MAX_SEGMENTS

    # commit after every image: 60 commits, each adding a delta segment to the terms it touches
    run(tmp_path / "p", commit_every_n=1, workers=2)
    with Collection.open("c") as col:
        q = "SELECT max(c) FROM (SELECT count(*) c FROM postings GROUP BY term_id)"
        worst = col.db.execute(q).fetchone()
        assert worst[0] <= MAX_SEGMENTS and col.meta["generation"] == 15  # a commit per batch of 4


def test_collection_name_or_path(tmp_path, lexsearch_home):
    make_images(tmp_path / "p", 1)
    run(tmp_path / "p", name="holiday")
    assert (lexsearch_home / "collections" / "holiday" / "index.db").exists()
    run(tmp_path / "p", name=str(tmp_path / "elsewhere"))
    assert (tmp_path / "elsewhere" / "index.db").exists()


def _folders_read(monkeypatch):
    """Record which folders' rows a run reads (the others matched their stored digest)."""
    read: list[str] = []
    orig = Collection.rows_in_folders

    def spy(self, folders):
        folders = list(folders)
        read.extend(folders)
        return orig(self, folders)

    monkeypatch.setattr(Collection, "rows_in_folders", spy)
    return read


def test_unchanged_folders_are_not_read_and_the_counts_stay_right(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    for k in range(3):
        make_images(root / f"f{k}", 3, start=10 * k)
    (root / "f1" / "broken.png").write_bytes(b"not a png")
    summary, _ = run(root)
    assert (summary.indexed, summary.failed) == (9, 1)
    read = _folders_read(monkeypatch)
    summary, _ = run(root)
    assert (summary.indexed, summary.unchanged, summary.failed, summary.failed_before) == (0, 9, 0, 1)
    assert read == []  # every folder matched its digest: no image row was read
    make_images(root / "f2", 1, start=99)  # one new file in one folder
    summary, _ = run(root)
    assert (summary.indexed, summary.unchanged, summary.failed_before) == (1, 9, 1)
    assert set(read) == {str(root / "f2")}  # read to plan, and again to record its new digest
    read.clear()
    summary, _ = run(root)
    assert (summary.indexed, summary.unchanged, summary.failed_before, read) == (0, 10, 1, [])


def test_changes_in_a_folder_with_a_digest_are_all_found(tmp_path):
    root = tmp_path / "photos"
    make_images(root / "a", 4)
    make_images(root / "a" / "deeper", 2, start=50)
    make_images(root / "b", 3, start=20)
    run(root)
    p = root / "a" / "img_00001.png"
    make_image(p, 777)  # new content
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    (root / "a" / "img_00002.png").unlink()
    os.replace(root / "b" / "img_00020.png", root / "a" / "deeper" / "moved.png")
    summary, _ = run(root)
    assert (summary.indexed, summary.moved, summary.removed, summary.unchanged) == (1, 1, 1, 6)
    shutil.rmtree(root / "a" / "deeper")  # a whole folder gone: its rows go too
    summary, _ = run(root)
    assert (summary.removed, summary.unchanged) == (3, 5)
    with Collection.open("c") as col:
        assert col.count() == 5 and str(root / "a" / "deeper") not in col.folder_states()


def test_exclusions_and_hidden_files_still_remove_rows_from_matched_folders(tmp_path):
    root = tmp_path / "photos"
    make_images(root / "keep", 2)
    make_images(root / "raw", 2, start=10)
    make_images(root / "keep", 1, start=20, ext=".gif")
    make_image(root / "keep" / ".hidden.png", 5)
    summary, _ = run(root, include_hidden=True)
    assert summary.indexed == 6
    summary, _ = run(root, include_hidden=True, exclude=["*.gif"])
    assert (summary.removed, summary.unchanged) == (1, 5)
    summary, _ = run(root, exclude=["*.gif"])
    assert (summary.removed, summary.unchanged) == (1, 4)
    summary, _ = run(root, exclude=["*.gif", "raw"])
    assert (summary.removed, summary.unchanged) == (2, 2)
    with Collection.open("c") as col:
        assert sorted(os.path.basename(r.path) for r in col.rows()) == ["img_00000.png", "img_00001.png"]


def test_a_write_to_a_folder_clears_its_digest_so_the_next_run_reads_it(tmp_path):
    root = tmp_path / "photos"
    make_images(root, 3)
    run(root)
    with Collection.open("c", readonly=False) as col:
        assert col.folder_states()[str(root)].digest is not None
        victim = col.rows_by_path()[str(root / "img_00001.png")].id
        col.apply(build_mod.Changes(remove=[victim]))  # the file is still there: the next run must see it
        assert col.folder_states()[str(root)].digest is None
        assert col.verify() == []
    summary, _ = run(root)
    assert (summary.indexed, summary.unchanged) == (1, 2)


def test_a_run_cut_short_leaves_no_digest_that_hides_a_change(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    make_images(root, 3)
    run(root)
    make_images(root, 4, start=10)
    orig = build_mod._Builder.handle

    def handle_then_stop(self, d):  # Ctrl-C after two new files: they are committed, the rest are not
        if self.summary.indexed == 2:
            raise KeyboardInterrupt
        orig(self, d)

    with monkeypatch.context() as m:
        m.setattr(build_mod._Builder, "handle", handle_then_stop)
        with pytest.raises(KeyboardInterrupt):
            run(root)
    with Collection.open("c") as col:
        assert col.count() == 5 and col.folder_states()[str(root)].digest is None
    summary, _ = run(root)
    assert (summary.indexed, summary.unchanged) == (2, 5)


def test_a_file_root_inside_a_scanned_folder(tmp_path):
    root = tmp_path / "photos"
    make_images(root, 3)
    for _ in range(2):
        summary, _ = run([root / "img_00001.png", root])
        assert summary.total == 3
    summary, _ = run(root)
    assert (summary.unchanged, summary.total) == (3, 3)


def test_reindexing_rewrites_a_damaged_dense_file(tmp_path, caplog):
    """Nothing changed on disk, so nothing is embedded; the run still finds the damaged FAISS file and
    rewrites it from the stored vectors, after which an image-as-query search no longer warns."""
    import logging

    make_images(tmp_path / "photos", 6)
    run(tmp_path / "photos")
    with Collection.open("c") as col:
        (name,) = [r[0] for r in col.db.execute("SELECT name FROM dense_segments")]
        q = col.dense_vectors([3])[3]
    (col.path / name).write_bytes((col.path / name).read_bytes()[:100])

    def search_warns() -> bool:
        caplog.clear()
        with Collection.open("c") as col:
            assert col.dense_search(q, 3)[0][0] == 3
        return any(r.levelno >= logging.WARNING for r in caplog.records)

    assert search_warns()
    summary, _ = run(tmp_path / "photos")
    assert (summary.indexed, summary.unchanged) == (0, 6)
    assert not search_warns()
