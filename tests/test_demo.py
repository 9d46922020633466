"""`lexsearch demo` end to end: world, training, index, queries, explanation, heat map; then reuse."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from PIL import Image

from lexsearch.cli import cli


@pytest.mark.slow
def test_demo_runs_the_whole_loop_and_reuses_its_model(tmp_path, lexsearch_home):
    runner = CliRunner()
    args = ["demo", str(tmp_path / "demo"), "--images", "240", "--minutes", "0.5", "--device", "cpu"]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    out = first.stdout
    assert "t2i R@1" in out and "240 indexed" in out
    assert "$ lexsearch query 'a red circle' --collection demo" in out
    assert "$ lexsearch query 'zebra' --collection demo" in out
    assert "the image shows:" in out
    # The demo distils a student, and its queries go through it.
    assert "Distilling a torch-free query encoder" in first.stderr
    models = list((lexsearch_home / "models").glob("demo-*"))
    assert len(models) == 1 and (models[0] / "student.json").is_file()
    with Image.open(tmp_path / "demo" / "explain.png") as heat:
        assert heat.format == "PNG" and max(heat.size) >= 512  # readable, not the 64 px toy image

    second = runner.invoke(cli, args)
    assert second.exit_code == 0, second.output
    assert "Reusing the model" in second.stderr and "t2i R@1" not in second.stdout
    assert "Distilling" not in second.stderr  # the student is reused with its model
    assert "Index: 240 indexed" in second.stdout  # the demo rebuilds its collection from scratch each run

    query = runner.invoke(cli, ["query", "red circle", "--collection", "demo", "--paths", "--top", "2"])
    assert query.exit_code == 0, query.output
    assert all(line.endswith(".png") for line in query.stdout.splitlines())
