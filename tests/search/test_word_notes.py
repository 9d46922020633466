"""A query word the model was never trained on gets one note (Results.notes), in the library and the CLI;
a model without the record (older checkpoints) gives none."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from test_search import IMAGES, BagEncoder, MemoryCollection

from lexsearch.search.query import search

TRAINED = ["a", "beach", "black", "car", "dog", "grass", "horse", "night", "red", "sky", "white"]


class TrainedBagEncoder(BagEncoder):
    """The bag-of-words encoder with a model config that records its training captions' words."""

    def __init__(self, words=TRAINED):
        super().__init__()
        self.config = SimpleNamespace(caption_words=list(words))


def test_an_unknown_word_gets_one_note_and_the_search_still_runs():
    res = search(MemoryCollection(IMAGES), TrainedBagEncoder(), "white cat", top=10)
    assert res.notes == ["'cat' is not a word this model was trained on; results for it are guesses"]
    assert res and all(any(w == "white" for w, _ in r.words) for r in res)  # "white" still matches


def test_several_unknown_words_share_one_line_and_known_words_none():
    col, enc = MemoryCollection(IMAGES), TrainedBagEncoder()
    res = search(col, enc, 'cat "white zebra" +horse -night', top=10, expand=True)
    assert res.notes == [
        "'cat', 'zebra' are not words this model was trained on; results for them are guesses"
    ]
    assert search(col, enc, "White HORSE on the beach", top=10).notes == []  # case and function words


def test_a_query_nothing_matches_keeps_its_note():
    res = search(MemoryCollection(IMAGES), TrainedBagEncoder(), "cat", top=10)
    assert list(res) == []
    assert res.notes == ["'cat' is not a word this model was trained on; results for it are guesses"]


def test_no_record_no_note():
    col = MemoryCollection(IMAGES)
    assert search(col, BagEncoder(), "white cat", top=10).notes == []  # no config at all
    assert search(col, TrainedBagEncoder(words=[]), "white cat", top=10).notes == []  # an empty record


def test_results_have_their_own_notes():
    from lexsearch.search.results import Results

    a, b = Results(), Results([1])
    a.notes.append("x")
    assert b.notes == [] and list(b) == [1]


@pytest.mark.parametrize("fmt", ["table", "json", "paths"])
def test_the_cli_prints_the_note_on_stderr(_tiny_model_master, tmp_path, fmt):
    from conftest import TINY_TEXTS
    from fakes import make_images

    from lexsearch.cli import cli
    from lexsearch.model.config import CONFIG_FILE
    from lexsearch.model.vocab import caption_words

    model = tmp_path / "model"
    shutil.copytree(_tiny_model_master, model)
    path = model / CONFIG_FILE
    payload = json.loads(path.read_text())
    payload["model"]["caption_words"] = sorted(caption_words(TINY_TEXTS))
    path.write_text(json.dumps(payload))
    make_images(tmp_path / "photos", 3)
    col = str(tmp_path / "col")
    runner = CliRunner()
    res = runner.invoke(
        cli, ["index", str(tmp_path / "photos"), "--model", str(model), "--collection", col, "--quiet"]
    )
    assert res.exit_code == 0, res.output
    flag = {"table": [], "json": ["--json"], "paths": ["--paths"]}[fmt]
    res = runner.invoke(cli, ["query", "red", "zebra", "--collection", col, *flag])
    assert res.exit_code == 0, res.output
    note = "note: 'zebra' is not a word this model was trained on; results for it are guesses\n"
    # Every format says it on stderr: stdout stays parseable (--json) and pipeable (--paths).
    assert res.stderr == note
    assert "zebra" not in res.stdout
    if fmt == "json":
        json.loads(res.stdout)
    res = runner.invoke(cli, ["query", "red", "star", "--collection", col])
    assert res.exit_code == 0 and "note:" not in res.stderr


class ReadOutEncoder(TrainedBagEncoder):
    """A model whose images are read out on some words only (``image_columns``, as a frozen-text mini model's)
    and whose text tower reads words it has no image column for by their meaning, as a real LLM reads
    "crimson" as red: its text vectors lie on the readable words too."""

    MEANING = {"crimson": "red", "scarlet": "red", "automobile": "car", "pony": "horse"}

    def __init__(self):
        super().__init__()
        self.config.image_columns = sorted(set(range(self.vocab_size)))

    def _vec(self, words):
        return super()._vec([self.MEANING.get(w, w) for w in words])


def test_a_word_no_image_is_read_out_on_is_matched_by_its_meaning():
    res = search(MemoryCollection(IMAGES), ReadOutEncoder(), "crimson automobile", top=3)
    assert [r.image_id for r in res][:1] == [4]  # the red car
    assert res.notes == [
        "'crimson', 'automobile' are no words images are read out on; the query is matched by its meaning "
        "to the model: car, red, sky"
    ]


def test_only_the_unread_words_are_read_by_meaning():
    res = search(MemoryCollection(IMAGES), ReadOutEncoder(), "pony night", top=10)
    assert [r.image_id for r in res][0] == 2  # the white horse at night
    assert len(res.notes) == 1 and res.notes[0].startswith("'pony' is no word images are read out on")


def test_a_model_read_out_on_every_word_keeps_the_shared_word_rule():
    # The same query with a model whose images hold every word (no image_columns): no word of it is in
    # the vocabulary, so nothing honestly matches.
    enc = ReadOutEncoder()
    enc.config.image_columns = []
    res = search(MemoryCollection(IMAGES), enc, "crimson automobile", top=3)
    assert list(res) == []
