"""A tiny model and a small indexed collection, shared by the server and browser tests."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from lexsearch.cli import cli


@pytest.fixture(scope="session")
def indexed(_tiny_model_master, tmp_path_factory):
    """A tiny model and a 6-image collection, built once for the module (tests get the same folders)."""
    from fakes import make_images

    root = tmp_path_factory.mktemp("serve")
    model = root / "model"
    shutil.copytree(_tiny_model_master, model)
    make_images(root / "photos", 6)
    col = root / "col"
    res = CliRunner().invoke(
        cli, ["index", str(root / "photos"), "--model", str(model), "--collection", str(col), "--quiet"]
    )
    assert res.exit_code == 0, res.output
    return root, col
