"""A training run fails fast on bad data and never leaves a folder that passes for a model: the data is
checked before any base model is built, a model exists in ``--out`` only from the run's first checkpoint
on, and ``index`` / ``query`` refuse anything less with one line. ``--max-minutes`` bounds the tiny bases'
pretraining too."""

from __future__ import annotations

import shutil
import time

import pytest
from click.testing import CliRunner
from fakes import make_images

from lexsearch.cli import cli
from lexsearch.errors import DataError, UsageError
from lexsearch.train.config import train_config
from lexsearch.train.loop import train


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from lexsearch.data.toyworld import generate_toy_world

    root = tmp_path_factory.mktemp("toy")
    generate_toy_world(root, 40, seed=0)
    return root


def _no_bases(monkeypatch):
    """Make building a base model fail the test: the checks must come first."""
    import lexsearch.tiny.bases as tiny_bases

    monkeypatch.setattr(tiny_bases, "prepare_tiny_bases", lambda *a, **k: pytest.fail("bases built"))


def _short_lm(monkeypatch):
    """Pretrain the tiny LM for a few steps only: these tests are about files and messages, not quality."""
    from dataclasses import replace

    import lexsearch.tiny.bases as tiny_bases
    from lexsearch.tiny.config import PretrainConfig

    fast = PretrainConfig(lm_steps=4, lm_batch_size=4)
    monkeypatch.setattr(tiny_bases, "PretrainConfig", lambda seed=0: replace(fast, seed=seed))


def _one_line(res) -> str:
    assert res.exit_code != 0, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in res.output, res.output
    return lines[0]


def test_too_few_pairs_for_a_batch_fail_before_the_bases(toy, tmp_path, monkeypatch):
    _no_bases(monkeypatch)
    out = tmp_path / "model"
    res = CliRunner().invoke(cli, ["train", "--data", str(toy), "--out", str(out), "--quiet"])
    line = _one_line(res)
    assert res.exit_code == 2 and "36 training pairs" in line and "batch of 128" in line
    assert not out.exists()  # nothing created, least of all something that looks like a model


def test_an_unreadable_image_fails_before_the_bases(toy, tmp_path, monkeypatch):
    _no_bases(monkeypatch)
    world = tmp_path / "world"
    shutil.copytree(toy, world)
    victim = sorted((world / "images").iterdir())[7]
    victim.write_bytes(victim.read_bytes()[:60])  # a truncated PNG: its header reads, its pixels do not
    with pytest.raises(DataError, match=victim.name):
        train(train_config("tiny", data=str(world), out=str(tmp_path / "m"), batch_size=8, num_workers=0))
    assert not (tmp_path / "m").exists()


def test_a_run_that_dies_mid_way_leaves_no_model(toy, tmp_path, monkeypatch):
    import lexsearch.train.loop as loop

    real_step = loop.train_step
    calls = []

    def dies_at_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C, or any failure, before the first checkpoint (step 4)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", dies_at_step_3)
    _short_lm(monkeypatch)
    out = tmp_path / "model"
    args = ["train", "--data", str(toy), "--out", str(out), "--batch-size", "8", "--quiet", "--seed", "1"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 130 and len(calls) == 3
    assert (out / "base").is_dir()  # the bases it was given: the folder is a run, not a model

    # index and query refuse it with one line; nothing is created for it.
    make_images(tmp_path / "photos", 2)
    runner = CliRunner()
    res = runner.invoke(cli, ["index", str(tmp_path / "photos"), "--model", str(out), "--collection", "c"])
    assert "holds no model yet" in _one_line(res)
    assert not (tmp_path / "lexsearch-home" / "collections" / "c").exists()
    from lexsearch.tiny.builder import build_tiny_checkpoint

    good = build_tiny_checkpoint(tmp_path / "good", ["a red circle", "a blue square"], seed=0)
    col = str(tmp_path / "col")
    res = runner.invoke(cli, ["index", str(tmp_path / "photos"), "--model", str(good), "--collection", col])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["query", "red", "--collection", col, "--model", str(out)])
    assert "holds no model yet" in _one_line(res)

    # The same --out trains again from the start (there was no checkpoint to resume).
    monkeypatch.setattr(loop, "train_step", real_step)
    res = CliRunner().invoke(cli, [*args, "--epochs", "0.5"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["index", str(tmp_path / "photos"), "--model", str(out), "--collection", "c"])
    assert res.exit_code == 0, res.output


def test_a_model_without_its_weights_is_refused_in_one_line(tmp_path, tiny_model_dir):
    (tiny_model_dir / "lexvla.safetensors").unlink()
    make_images(tmp_path / "photos", 1)
    res = CliRunner().invoke(cli, ["index", str(tmp_path / "photos"), "--model", str(tiny_model_dir)])
    assert "not a complete model" in _one_line(res)


def test_an_existing_model_or_run_is_not_overwritten(toy, tmp_path, tiny_model_dir):
    with pytest.raises(UsageError, match="already holds a model"):
        train(train_config("tiny", data=str(toy), out=str(tiny_model_dir), batch_size=8))


def test_a_deadline_shortens_the_lm_pretraining_and_it_is_not_cached(toy, tmp_path):
    from dataclasses import replace

    from lexsearch.data.pairs import load_folder
    from lexsearch.model.presets import preset_config
    from lexsearch.tiny.bases import pretrain_tiny_bases
    from lexsearch.tiny.config import PretrainConfig

    pairs = load_folder(toy)
    cfg = replace(PretrainConfig(), lm_steps=400, lm_batch_size=4)
    t0 = time.monotonic()
    bases = pretrain_tiny_bases(toy, preset_config("tiny"), cfg, cache_root=tmp_path / "cache", deadline=t0)
    assert bases.report["lm_steps_done"] == 0 and bases.scratch and not bases.cached
    shutil.rmtree(bases.root)  # what write_pretrained_bases does once it has copied them
    assert not any((tmp_path / "cache").iterdir())  # no cache entry for these inputs
    # Without a deadline the same inputs pretrain in full and are cached.
    full = pretrain_tiny_bases(
        toy,
        preset_config("tiny"),
        replace(cfg, lm_steps=3),
        captions=pairs.captions,
        cache_root=tmp_path / "c",
    )
    assert full.report["lm_steps_done"] == 3 and not full.scratch and full.root.parent == tmp_path / "c"
