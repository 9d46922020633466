"""`lexsearch index` end to end with the real tiny LexVLA encoder (offline, CPU)."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner
from fakes import make_images

from lexsearch.cli import cli
from lexsearch.index import Collection


def test_index_help_lists_the_flags():
    result = CliRunner().invoke(cli, ["index", "--help"])
    assert result.exit_code == 0
    for flag in [
        "--model",
        "--collection",
        "--exclude",
        "--include-hidden",
        "--batch-size",
        "--workers",
        "--device",
        "--quiet",
        "--rebuild",
    ]:
        assert flag in result.output


def test_index_with_the_tiny_model(tmp_path, tiny_model_dir, lexsearch_home):
    photos = tmp_path / "photos"
    make_images(photos, 5)
    (photos / "broken.jpg").write_text("not an image")
    runner = CliRunner()
    args = ["index", str(photos), "--model", str(tiny_model_dir), "--device", "cpu", "--batch-size", "2"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "5 indexed, 0 unchanged, 0 moved, 0 removed, 1 failed" in result.stdout
    assert "broken.jpg" in result.stderr and result.stderr.count("warning:") == 1

    from lexsearch.model import Encoder

    enc = Encoder.load(tiny_model_dir, device="cpu")
    with Collection.open("default") as col:
        assert col.path == lexsearch_home / "collections" / "default"
        assert col.verify() == []
        assert (col.meta["model_id"], col.meta["vocab_size"], col.meta["dense_dim"]) == (
            enc.model_id,
            enc.vocab_size,
            enc.dense_dim,
        )
        # The stored vectors are the encoder's own (float16 rounding aside).
        path = str(photos / "img_00003.png")
        image_id = next(r.id for r in col.rows() if r.path == path)
        terms, weights = col.forward([image_id])[image_id]
        expected = enc.encode_images([path]).sparse.toarray()[0]
        assert np.allclose(expected[terms], weights, rtol=2e-2, atol=2e-3)
        assert np.count_nonzero(expected) == terms.size

    result = runner.invoke(cli, args + ["--quiet"])
    assert result.exit_code == 0 and result.stdout == ""

    # A collection written by another model: refused in one line that names the rebuild command.
    from fakes import FakeEncoder

    from lexsearch.index import build_index

    with Collection.open("other", readonly=False) as col:
        build_index([photos], FakeEncoder(), col)
    result = runner.invoke(cli, args + ["--collection", "other"])
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "Rebuild it with: lexsearch index" in result.stderr and "--rebuild" in result.stderr
    result = runner.invoke(cli, args + ["--collection", "other", "--rebuild"])
    assert result.exit_code == 0 and "5 indexed" in result.stdout
    result = runner.invoke(cli, ["index", str(photos), "--model", str(tmp_path / "missing")])
    assert result.exit_code != 0 and "No model" in result.stderr


def test_ctrl_c_says_how_many_files_were_saved_and_the_rerun_resumes(tmp_path, tiny_model_dir, monkeypatch):
    from lexsearch.index import build as build_mod

    photos = tmp_path / "photos"
    make_images(photos, 5)
    args = ["index", str(photos), "--model", str(tiny_model_dir), "--device", "cpu", "--collection", "c"]
    orig = build_mod._Builder.handle

    def handle_then_stop(self, d):  # Ctrl-C while the third file is decided
        if self.handled == 2:
            raise KeyboardInterrupt
        orig(self, d)

    with monkeypatch.context() as m:
        m.setattr(build_mod._Builder, "handle", handle_then_stop)
        result = CliRunner().invoke(cli, args)
    assert result.exit_code == 130
    assert result.stderr.strip().splitlines()[-1] == (
        "Interrupted: 2 of 5 new or changed files indexed and saved; "
        "running the same command again resumes with the rest"
    )
    with Collection.open("c") as col:
        assert col.count() == 2 and col.verify() == []
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "3 indexed, 2 unchanged" in result.stdout
    # While the folders are still being scanned: nothing was indexed, and the line says so.
    make_images(photos, 2, start=10)
    with monkeypatch.context() as m:

        def scan_interrupted(*a, **k):
            raise KeyboardInterrupt

        m.setattr(build_mod, "scan_folders", scan_interrupted)
        result = CliRunner().invoke(cli, args)
    assert result.exit_code == 130
    assert result.stderr.strip().splitlines()[-1] == (
        "Interrupted: while scanning the folders; nothing was indexed yet, the collection is as it was"
    )
    with Collection.open("c") as col:
        assert col.count() == 5 and col.verify() == []


def test_progress_reports_the_model_load_apart_and_each_small_forward(tmp_path, tiny_model_dir, monkeypatch):
    """The networks load once, announced before any file is counted (so a bar neither sits at 0 through the
    load nor counts it in its ETA); on a CPU a block of --batch-size files is embedded in forwards of
    CPU_FORWARD_BATCH images, and each forward's files are reported before the next forward starts."""
    from lexsearch.index import IndexOptions, Reporter, build_index
    from lexsearch.index.build import CPU_FORWARD_BATCH
    from lexsearch.model.encoder import Encoder
    from lexsearch.model.lazy import LazyEncoder

    n = 2 * CPU_FORWARD_BATCH + 3
    photos = tmp_path / "photos"
    make_images(photos, n)
    encoder = LazyEncoder(tiny_model_dir, device="cpu")
    events: list[tuple[str, object]] = []
    real = Encoder.encode_pixels

    def counting(self, pixels):
        events.append(("forward", len(pixels)))
        return real(self, pixels)

    monkeypatch.setattr(Encoder, "encode_pixels", counting)
    reporter = Reporter(
        on_total=lambda k: events.append(("total", k)),
        on_advance=lambda k: events.append(("advance", k)),
        on_model_loading=lambda: events.append(("loading", encoder.loaded)),
        on_model_loaded=lambda s: events.append(("loaded", encoder.loaded)),
    )
    with Collection.open("c", readonly=False) as col:
        summary = build_index([photos], encoder, col, IndexOptions(batch_size=32), reporter)
    assert summary.indexed == n
    assert events[:3] == [("total", n), ("loading", False), ("loaded", True)]
    shape = []  # forwards and the runs of advances between them
    for kind, k in events[3:]:
        if kind == "forward":
            shape.append(("forward", k))
        elif shape and shape[-1][0] == "advance":
            shape[-1] = ("advance", shape[-1][1] + k)
        else:
            shape.append(("advance", k))
    b = CPU_FORWARD_BATCH
    assert shape == [
        ("forward", b),
        ("advance", b),
        ("forward", b),
        ("advance", b),
        ("forward", 3),
        ("advance", 3),
    ]
