"""A folder of odd and broken files (tests/oddfiles.py): no file stops a run, each is indexed or named once."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

from fakes import FakeEncoder, make_image
from oddfiles import (
    LATIN1_NAMES,
    SKIPPED_NAMES,
    make_odd_folder,
    tiff_with_bad_tag_count,
    tiff_with_many_samples,
)
from PIL import Image

from lexsearch.index import Collection, Reporter, build_index
from lexsearch.index.scan import scan


def shown(path: str) -> str:
    """How the CLI prints a name: non-UTF-8 bytes as \\xNN, control characters escaped (\\n)."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _run(root, name="c"):
    warnings: list[tuple[str, str]] = []
    with Collection.open(name, readonly=False) as col:
        summary = build_index(
            [root], FakeEncoder(), col, reporter=Reporter(on_warning=lambda p, r: warnings.append((p, r)))
        )
    return summary, warnings


def _latin1_folder(tmp_path):
    d = tmp_path / "nas"
    d.mkdir()
    for i, name in enumerate(LATIN1_NAMES):
        make_image(os.path.join(os.fsencode(d), name).decode("utf-8", "surrogateescape"), i, fmt="PNG")
    make_image(d / "plain.png", 9)
    return d


def test_names_that_are_not_utf8_are_indexed_and_stored_losslessly(tmp_path):
    d = _latin1_folder(tmp_path)
    summary, warnings = _run(d)
    assert (summary.indexed, summary.failed, warnings) == (4, 0, [])
    expected = {os.fsdecode(os.path.join(os.fsencode(d), n)) for n in LATIN1_NAMES} | {str(d / "plain.png")}
    with Collection.open("c") as col:
        assert {r.path for r in col.rows()} == expected
        assert set(col.image_paths(range(1, col.max_image_id + 1)).values()) == expected
        assert col.verify() == []
        db = col.path / "index.db"
    # The bytes on disk are the bytes in the index: the Latin-1 names are stored as their raw bytes.
    with sqlite3.connect(db) as conn:
        stored = {p for (p,) in conn.execute("SELECT path FROM images")}
    assert {os.path.join(os.fsencode(d), n) for n in LATIN1_NAMES} <= stored
    # The next run finds them unchanged (the stored path matches the scanned one), and a move keeps its id.
    summary, _ = _run(d)
    assert (summary.indexed, summary.unchanged) == (0, 4)
    src = os.path.join(os.fsencode(d), LATIN1_NAMES[0])
    os.rename(src, os.path.join(os.fsencode(d), b"moved_" + LATIN1_NAMES[0]))
    summary, _ = _run(d)
    assert (summary.moved, summary.indexed, summary.removed) == (1, 0, 0)


def test_a_failure_whose_reason_quotes_a_latin1_name_is_recorded(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    with open(os.path.join(os.fsencode(d), b"caf\xe9.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    make_image(d / "ok.png", 1)
    summary, warnings = _run(d)
    assert (summary.indexed, summary.failed) == (1, 1) and "caf" in warnings[0][0]
    with Collection.open("c") as col:
        assert [os.fsencode(p) for p, _ in col.failures()] == [os.path.join(os.fsencode(d), b"caf\xe9.jpg")]


def test_files_skipped_for_their_type_are_counted(tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    make_image(d / "a.png", 1)
    make_image(d / "b.tga", 2)  # once skipped by extension, like PPM, ICO, JPEG 2000, MPO, APNG, PSD
    (d / "notes.txt").write_text("x")
    (d / "clip.mov").write_bytes(b"\0" * 10)
    (d / "clip2.mov").write_bytes(b"\0" * 10)
    (d / "README").write_text("x")
    (d / "Thumbs.db").write_bytes(b"\0")  # junk, not worth a line
    skipped: list[tuple[str, str]] = []
    found = [os.path.basename(f.path) for f in scan([d], on_skip=lambda p, k: skipped.append((p, k)))]
    assert found == ["a.png", "b.tga"]
    assert sorted(k for _, k in skipped) == [".mov", ".mov", ".txt", "no extension"]
    summary, _ = _run(d)
    assert summary.indexed == 2 and sum(summary.skipped.values()) == 4
    assert "4 skipped (not images: 2 .mov, 1 .txt, 1 no extension; -v lists them)" in summary.line()


def test_odd_folder_end_to_end_through_the_cli(tmp_path, tiny_model_dir):
    """>= 50 odd files through `lexsearch index` in a real process (C-level stderr included): exit 0, no
    traceback, every file indexed or named once with its reason, and no stderr line that names no file."""
    folder = tmp_path / "odd"
    expected = make_odd_folder(folder)
    assert len(expected) >= 50
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    cmd = [
        sys.executable,
        "-m",
        "lexsearch",
        "index",
        str(folder),
        "--model",
        str(tiny_model_dir),
        "--device",
        "cpu",
        "--collection",
        "odd",
        "--batch-size",
        "8",
    ]
    proc = subprocess.run(cmd, capture_output=True, env=env, timeout=600)
    stderr = proc.stderr.decode("utf-8")  # valid UTF-8 even though some names are not
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    names = {n: shown(os.fsdecode(os.path.join(os.fsencode(folder), n))) for n in expected}
    lines = [line for line in stderr.splitlines() if line.strip()]
    for line in lines:  # each line is a per-file warning naming one file of the folder
        assert line.startswith("warning: ") and any(
            line.startswith(f"warning: {p}: ") for p in names.values()
        ), line
    with Collection.open("odd") as col:
        ok = {os.fsencode(r.path) for r in col.rows() if r.status == "ok"}
        assert col.verify() == []
    for name, want in expected.items():
        full = os.path.join(os.fsencode(folder), name)
        named = [line for line in lines if line.startswith(f"warning: {names[name]}: ")]
        if want == "ok":
            assert full in ok and not named, (name, named)
        else:
            assert full not in ok and len(named) == 1 and want in named[0], (name, named)
    summary = proc.stdout.decode()
    assert f"{len(ok)} indexed" in summary and f"{len(SKIPPED_NAMES)} skipped" in summary
    assert "failed" in summary and f"{len(expected) - len(ok)} failed" in summary


def test_decoder_noise_only_with_verbose(tmp_path, tiny_model_dir):
    """libtiff's warnings (written by C straight to stderr) and Pillow's UserWarnings name no file: they are
    shown with -v only; without it stderr holds just the per-file warnings."""
    photos = tmp_path / "p"
    photos.mkdir()
    make_image(photos / "ok.png", 1)
    (photos / "noise.tif").write_bytes(tiff_with_bad_tag_count())
    (photos / "samples.tif").write_bytes(tiff_with_many_samples())  # Pillow's own ERROR log line
    Image.open(photos / "ok.png").save(
        photos / "exif.jpg", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff"
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    for verbose in (False, True):
        cmd = [
            sys.executable,
            "-m",
            "lexsearch",
            *(["-v"] if verbose else []),
            "index",
            str(photos),
            "--model",
            str(tiny_model_dir),
            "--device",
            "cpu",
            "--collection",
            "noise",
            "--rebuild",
        ]
        proc = subprocess.run(cmd, capture_output=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr
        err = proc.stderr.decode()
        assert "warning: " + str(photos / "noise.tif") in err
        noise = ["TIFFFetchNormalTag", "Corrupt EXIF", "Metadata Warning", "More samples per pixel"]
        assert [n in err for n in noise] == [verbose] * 4, err
        if not verbose:
            assert err.strip().splitlines() == [
                f"warning: {photos / 'noise.tif'}: corrupt image (decoder error -2)",
                f"warning: {photos / 'samples.tif'}: not an image, or an unsupported format",
            ]
