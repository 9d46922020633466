"""`lexsearch demo` end to end: world, training, index, queries, explanation, heat map; then reuse."""

from __future__ import annotations

import json
import re

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
    # The word the toy world never names is called one, as `lexsearch query zebra` says it (after the note
    # that the query goes to the LM, when the student answers the others: it never saw the word either).
    said = re.search(r"\$ lexsearch query 'zebra' --collection demo\n((?:note: .*\n)*)", out).group(1)
    assert "note: 'zebra' is not a word this model" in said
    assert set(said.splitlines()) <= {
        "note: 'zebra' is not a word this model was trained on; results for it are guesses",
        "note: this query uses the LM: 'zebra' is not a word the student was trained on",
    }
    assert "the image shows:" in out
    # The demo distils a student, and its queries go through it if (and only if) it passed its check.
    assert "Distilling a torch-free query encoder" in first.stderr
    models = list((lexsearch_home / "models").glob("demo-*"))
    assert len(models) == 1 and (models[0] / "student.json").is_file()
    gate = json.loads((models[0] / "student.json").read_text())["distill"]["gate"]
    verdict = "passed" if gate["passed"] else "failed"
    assert f"Query encoder: the student {verdict} its quality check after" in out and "cosine" in out
    if gate["passed"]:
        assert "Queries encoded by the student." in out and "note:" not in first.stderr
    else:
        assert "Queries encoded by the LM." in out and "note: queries use the LM" in first.stderr
    with Image.open(tmp_path / "demo" / "explain.png") as heat:
        assert heat.format == "PNG" and max(heat.size) >= 512  # readable, not the 64 px toy image

    second = runner.invoke(cli, args)
    assert second.exit_code == 0, second.output
    assert "Reusing the model" in second.stderr and "t2i R@1" not in second.stdout
    if gate["passed"]:
        assert "Distilling" not in second.stderr  # the student is reused with its model
    else:
        assert "Distilling" in second.stderr  # a student that failed is distilled again
    assert "Index: 240 indexed" in second.stdout  # the demo rebuilds its collection from scratch each run

    query = runner.invoke(cli, ["query", "red circle", "--collection", "demo", "--paths", "--top", "2"])
    assert query.exit_code == 0, query.output
    assert all(line.endswith(".png") for line in query.stdout.splitlines())


@pytest.mark.slow
def test_a_starved_student_is_not_used_and_the_demo_answers_with_the_lm(tmp_path, lexsearch_home):
    """The demo's distillation cut to one step (as a busy machine might cut it): the student fails its check,
    and every answer the demo prints is the LM's."""
    from lexsearch.demo import DEMO_COLLECTION, run_demo
    from lexsearch.index.store import Collection
    from lexsearch.model.lazy import LazyEncoder
    from lexsearch.search import search

    report = run_demo(tmp_path / "demo", n_images=240, max_minutes=0.5, device="cpu", distill_steps=1)
    gate = json.loads((report.model / "student.json").read_text())["distill"]["gate"]
    assert gate["passed"] is False and report.distilled.startswith("failed its quality check after 1 steps")
    assert report.text_encoder == "lm" and "failed its quality check" in report.note
    lm = LazyEncoder(report.model, device="cpu", text_encoder="lm")
    with Collection.open(DEMO_COLLECTION, readonly=True) as col:
        for query, results in report.queries:
            assert [r.path for r in results] == [r.path for r in search(col, lm, query, top=3)], query


def test_the_mini_demo_without_gemma_says_what_to_install_before_anything(
    tmp_path, lexsearch_home, monkeypatch
):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith("gemma3_270m") else real(name, *a),
    )
    result = CliRunner().invoke(cli, ["demo", str(tmp_path / "demo"), "--preset", "mini"])
    assert result.exit_code != 0
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pip install 'lexsearch[gemma]'" in lines[0], result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "demo").exists()  # no world generated, no model started
