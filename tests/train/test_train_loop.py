"""The training loop end to end on a small toy world: resume continues the same curve, time limits stop
cleanly with a checkpoint, and ``lexsearch train --preset tiny`` writes a model the toolkit loads."""

from __future__ import annotations

import json

import pytest

from lexsearch.train.config import TrainConfig, train_config
from lexsearch.train.loop import LOG_FILE, train


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from lexsearch.data.toyworld import generate_toy_world

    root = tmp_path_factory.mktemp("toy")
    generate_toy_world(root, 40, seed=0)
    return root


def _config(toy, out, **kw) -> TrainConfig:
    # 40 images - 8 held out = 32 pairs = 4 steps an epoch: 6 steps cross an epoch boundary (reshuffle, save).
    base = {"batch_size": 8, "max_steps": 6, "log_every": 1, "num_workers": 0, "val_holdout": 8}
    return train_config("tiny", data=str(toy), out=str(out), **{**base, **kw})


def _steps(out) -> dict[int, dict]:
    lines = [json.loads(ln) for ln in (out / LOG_FILE).read_text().splitlines()]
    return {r["step"]: r for r in lines if "val" not in r}


def test_resume_continues_the_same_curve(toy, tmp_path):
    from safetensors.torch import load_file

    straight = train(_config(toy, tmp_path / "a", micro_batch_size=3))
    paused = train(_config(toy, tmp_path / "b", micro_batch_size=3, stop_at_step=3))
    assert paused.step == 3 and paused.stopped_early and paused.val is None
    resumed = train(_config(toy, tmp_path / "b", micro_batch_size=3, resume=True))
    assert resumed.step == straight.step == 6 and not resumed.stopped_early

    a, b = _steps(tmp_path / "a"), _steps(tmp_path / "b")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        for key in ("loss", "i2t", "reg_img", "reg_txt", "logit_scale", "lr", "active_img"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-4, abs=1e-6), (step, key)
    wa, wb = (
        load_file(str(tmp_path / "a" / "lexvla.safetensors")),
        load_file(str(tmp_path / "b" / "lexvla.safetensors")),
    )
    for name in wa:
        assert (wa[name] - wb[name]).abs().max() < 1e-5, name
    assert resumed.val["t2i"].keys() == {"R@1", "R@5", "R@10"}
    assert TrainConfig.load(tmp_path / "b").micro_batch_size == 3  # the config is saved with the run


def test_an_existing_run_is_not_overwritten_and_resume_needs_state(toy, tmp_path):
    from lexsearch.errors import UsageError
    from lexsearch.train.state import STATE_JSON

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / STATE_JSON).write_text("{}")  # a run with a checkpoint to resume
    with pytest.raises(UsageError, match="--resume"):
        train(_config(toy, tmp_path / "run"))
    with pytest.raises(UsageError, match="no training state"):
        train(_config(toy, tmp_path / "fresh", resume=True))


def test_time_limit_stops_cleanly_with_a_checkpoint(toy, tmp_path):
    from lexsearch.model import Encoder

    result = train(_config(toy, tmp_path / "run", max_minutes=1e-4, max_steps=50))
    assert result.stopped_early and result.step < 50
    assert (tmp_path / "run" / "train_state.json").is_file()
    assert Encoder.load(tmp_path / "run", device="cpu").vocab_size > 0


def test_cli_train_tiny_writes_a_loadable_model(toy, tmp_path):
    from click.testing import CliRunner

    from lexsearch.cli import cli
    from lexsearch.model import Encoder

    out = tmp_path / "model"
    args = [
        "train",
        "--data",
        str(toy),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--batch-size",
        "8",
        "--epochs",
        "1",
    ]
    result = CliRunner().invoke(cli, [*args, "--seed", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "t2i R@1" in result.output and "i2t R@1" in result.output
    for name in ("config.json", "lexvla.safetensors", "train_config.json", LOG_FILE):
        assert (out / name).is_file(), name
    enc = Encoder.load(out, device="cpu")
    texts = enc.encode_texts(["a red circle"])
    images = enc.encode_images(sorted((toy / "images").iterdir())[:2])
    assert texts.sparse.shape == (1, enc.vocab_size) and images.sparse.shape == (2, enc.vocab_size)
    # A second run into the same folder is refused with a readable message, not a traceback.
    again = CliRunner().invoke(cli, [*args, "--quiet"])
    assert again.exit_code == 2 and "--resume" in again.output


def test_cached_backbone_tokens_train_the_same_run_as_pixels(toy, tmp_path):
    # The backbone is frozen and images are not augmented: its tokens computed once per image must give the
    # very run that decoding and encoding every batch gives (same batches, losses and weights).
    from safetensors.torch import load_file

    cached = train(_config(toy, tmp_path / "a", cache_backbone=True))
    plain = train(_config(toy, tmp_path / "b", cache_backbone=False))
    assert cached.step == plain.step == 6
    a, b = _steps(tmp_path / "a"), _steps(tmp_path / "b")
    for step in a:
        for key in ("loss", "i2t", "t2i", "reg_img", "active_img"):
            assert a[step][key] == pytest.approx(b[step][key], rel=1e-4, abs=1e-6), (step, key)
    wa = load_file(str(tmp_path / "a" / "lexvla.safetensors"))
    wb = load_file(str(tmp_path / "b" / "lexvla.safetensors"))
    for name in wa:
        assert (wa[name] - wb[name]).abs().max() < 1e-4, name
    assert cached.val["t2i"] == pytest.approx(plain.val["t2i"])


def test_backbone_tokens_over_the_memory_cap_are_not_cached(toy, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="lexsearch.train.batches"):
        result = train(_config(toy, tmp_path / "a", cache_backbone=True, cache_backbone_gb=1e-6))
    assert result.step == 6
    assert any("not cached" in r.getMessage() for r in caplog.records)
