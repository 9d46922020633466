"""Shared fixtures: every test runs offline, on the CPU, with its own LEXSEARCH_HOME."""

from __future__ import annotations

import os
import shutil

import pytest

import lexsearch  # noqa: F401  (sets OMP_WAIT_POLICY before any test module imports torch)

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # tests never touch a GPU, even where one exists
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # and never the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Captions in the toy world's style: enough to give the tiny tokenizer whole-word pieces.
TINY_TEXTS = [
    f"a {size} {colour} {shape} {where}"
    for size in ("small", "large")
    for colour in ("red", "green", "blue", "yellow", "purple")
    for shape in ("circle", "square", "triangle", "star")
    for where in ("on a plain background", "on a striped background", "at the top", "at the bottom")
]


@pytest.fixture(autouse=True)
def lexsearch_home(tmp_path, monkeypatch):
    """All user state of a test goes to a temporary LEXSEARCH_HOME."""
    home = tmp_path / "lexsearch-home"
    monkeypatch.setenv("LEXSEARCH_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def _tiny_model_master(tmp_path_factory):
    from lexsearch.tiny.builder import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-model"), TINY_TEXTS, seed=0)


@pytest.fixture
def tiny_model_dir(_tiny_model_master, tmp_path):
    """An untrained tiny LexVLA checkpoint (random bases built from configs), a fresh copy per test."""
    dest = tmp_path / "tiny-model"
    shutil.copytree(_tiny_model_master, dest)
    return dest


@pytest.fixture(scope="session")
def small_collection(_tiny_model_master, tmp_path_factory):
    """(root, collection folder): the tiny model and 6 indexed images, built once (the server's tests share
    it read-only; its own LEXSEARCH_HOME keeps the build out of every test's home)."""
    from click.testing import CliRunner
    from fakes import make_images

    from lexsearch.cli import cli

    root = tmp_path_factory.mktemp("small-collection")
    model = root / "model"
    shutil.copytree(_tiny_model_master, model)
    make_images(root / "photos", 6)
    col = root / "col"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEXSEARCH_HOME", str(root / "home"))
        res = CliRunner().invoke(
            cli, ["index", str(root / "photos"), "--model", str(model), "--collection", str(col), "--quiet"]
        )
    assert res.exit_code == 0, res.output
    return root, col
