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
