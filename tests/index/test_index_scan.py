"""The folder scan: formats, hidden and junk skipping, excludes, symlink loops, the content hash."""

from __future__ import annotations

import os

import pytest
from fakes import make_image

from lexsearch.index.scan import HASH_HEAD_BYTES, content_hash, scan, under_roots


def names(files, root):
    return sorted(os.path.relpath(f.path, root) for f in files)


def test_scan_finds_image_formats_recursively(tmp_path):
    rels = ["a.jpg", "b.JPEG", "c.png", "d.webp", "e.gif", "f.bmp", "g.tiff", "sub/deeper/h.heic", "i.HEIF"]
    for rel in rels:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "raw.cr2").write_bytes(b"x")
    found = names(scan([tmp_path]), tmp_path)
    assert found == [
        "a.jpg",
        "b.JPEG",
        "c.png",
        "d.webp",
        "e.gif",
        "f.bmp",
        "g.tiff",
        "i.HEIF",
        os.path.join("sub", "deeper", "h.heic"),
    ]


def test_scan_skips_hidden_and_junk(tmp_path):
    for rel in [
        ".hidden/x.png",
        ".y.png",
        "node_modules/z.png",
        "@eaDir/t.png",
        "._a.jpg",
        ".git/o.png",
        "ok/k.png",
    ]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        make_image(p, 1)
    assert names(scan([tmp_path]), tmp_path) == [os.path.join("ok", "k.png")]
    # --include-hidden brings back hidden files, never junk folders or AppleDouble files
    assert names(scan([tmp_path], include_hidden=True), tmp_path) == [
        os.path.join(".hidden", "x.png"),
        ".y.png",
        os.path.join("ok", "k.png"),
    ]


def test_scan_exclude_globs_match_names_and_paths(tmp_path):
    for rel in ["keep.png", "skip.gif", "sub/a.png", "other/b.png"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    found = names(scan([tmp_path], exclude=["*.gif", "*/sub/*", "other"]), tmp_path)
    assert found == ["keep.png"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_scan_survives_symlink_loops_and_visits_each_folder_once(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"x")
    os.symlink(tmp_path, tmp_path / "a" / "loop")  # a -> root -> a -> ...
    os.symlink(tmp_path / "a", tmp_path / "alias")  # the same folder under a second name
    os.symlink(tmp_path / "missing", tmp_path / "dangling.png")  # broken link: skipped quietly
    found = list(scan([tmp_path]))
    assert len(found) == 1 and found[0].path.endswith("x.png")


def test_scan_accepts_files_and_overlapping_roots(tmp_path):
    make_image(tmp_path / "a.png", 1)
    (tmp_path / "sub").mkdir()
    make_image(tmp_path / "sub" / "b.png", 2)
    found = list(scan([tmp_path / "a.png", tmp_path, tmp_path / "sub"]))
    assert sorted(os.path.basename(f.path) for f in found) == ["a.png", "b.png"]
    assert all(f.size > 0 and f.mtime_ns > 0 for f in found)


def test_content_hash_uses_head_tail_and_size(tmp_path):
    big = bytearray(os.urandom(HASH_HEAD_BYTES + 5000))
    p = tmp_path / "big.jpg"
    p.write_bytes(bytes(big))
    h = content_hash(p)
    q = tmp_path / "renamed.jpg"
    os.replace(p, q)
    assert content_hash(q) == h  # a rename keeps the hash
    big[-1] ^= 0xFF  # a change in the last KB changes it
    q.write_bytes(bytes(big))
    assert content_hash(q) != h
    small = tmp_path / "s.png"
    small.write_bytes(b"abc")
    assert content_hash(small) != content_hash(q)


def test_under_roots():
    assert under_roots("/p/a/b.jpg", ["/p/a"])
    assert not under_roots("/p/ab/c.jpg", ["/p/a"])
    assert under_roots("/p/a", ["/p/a"])


def test_scan_folders_lists_each_folder_once_with_a_digest_of_its_listing(tmp_path):
    from lexsearch.index.paths import folder_digest
    from lexsearch.index.scan import scan_folders

    make_image(tmp_path / "a.png", 1)
    (tmp_path / "empty").mkdir()
    (tmp_path / "sub").mkdir()
    make_image(tmp_path / "sub" / "b.png", 2)
    (tmp_path / "sub" / "notes.txt").write_text("not an image")
    folders = list(scan_folders([tmp_path / "sub" / "b.png", tmp_path]))
    assert [(f.path, [os.path.basename(x.path) for x in f.files]) for f in folders] == [
        (None, ["b.png"]),  # a file given as a root
        (str(tmp_path), ["a.png"]),
        (str(tmp_path / "empty"), []),
        (str(tmp_path / "sub"), []),  # b.png was found already (as a root)
    ]
    top = folders[1]
    st = (tmp_path / "a.png").stat()
    assert top.digest == folder_digest([("a.png", st.st_size, st.st_mtime_ns)]) and folders[0].digest is None
    os.utime(tmp_path / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert list(scan_folders([tmp_path]))[0].digest != top.digest  # a new mtime is a new digest
    assert [f.path for f in scan([tmp_path])] == [str(tmp_path / "a.png"), str(tmp_path / "sub" / "b.png")]
