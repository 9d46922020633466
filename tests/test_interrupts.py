"""Ctrl-C: one or two lines that say what was kept and how to go on, and exit code 130."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from lexsearch.cli import cli


def _train_interrupted(tmp_path, monkeypatch, leave):
    """`lexsearch train` stopped by Ctrl-C after ``leave(out)`` wrote what the run had saved so far."""
    import lexsearch.train.loop as loop

    out = tmp_path / "model"

    def interrupted(config, progress=None, started=None):
        leave(out)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", interrupted)
    res = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "captions"), "--out", str(out)])
    assert res.exit_code == 130 and "Traceback" not in res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Interrupted: "), res.stderr
    return lines[0], out


def _checkpoint(out, step, total, fingerprint_ok=True):
    from lexsearch.model.config import CONFIG_FILE, WEIGHTS_FILE, fingerprint

    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text("{}")
    (out / WEIGHTS_FILE).write_bytes(b"weights of step %d" % step)
    state = {"step": step, "total_steps": total, "model_fingerprint": fingerprint(out)}
    (out / "train_state.json").write_text(json.dumps(state))
    if not fingerprint_ok:  # the next checkpoint's weights written, its state not yet
        (out / WEIGHTS_FILE).write_bytes(b"weights of step %d" % (step + 1))


@pytest.mark.parametrize(
    ("leave", "expected"),
    [
        (lambda out: None, "Interrupted: no checkpoint was saved yet, nothing to resume"),
        (
            lambda out: _checkpoint(out, 30, 120),
            "Interrupted: the checkpoint of step 30/120 is kept in {out}; add --resume to the same command "
            "to continue",
        ),
        (
            lambda out: _checkpoint(out, 30, 120, fingerprint_ok=False),
            "Interrupted: stopped while saving step 30/120: the checkpoint in {out} cannot be resumed exactly",
        ),
    ],
)
def test_ctrl_c_in_train_says_whether_a_checkpoint_was_kept(tmp_path, monkeypatch, leave, expected):
    line, out = _train_interrupted(tmp_path, monkeypatch, leave)
    assert line == expected.format(out=out)


def test_ctrl_c_in_train_before_the_first_checkpoint_with_a_log_left(tmp_path, monkeypatch):
    """A log but no state: a plain rerun would be refused ("already holds a training run") and --resume
    finds nothing to resume, so the line says to delete the folder."""

    def leave(out):
        out.mkdir()
        (out / "train_log.jsonl").write_text('{"step": 1}\n')

    line, out = _train_interrupted(tmp_path, monkeypatch, leave)
    assert line == f"Interrupted: no checkpoint was saved yet, nothing to resume; delete {out} to start again"
