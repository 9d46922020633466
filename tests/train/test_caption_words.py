"""A training run records its captions' words and its held-out images' word margins in the checkpoint."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lexsearch.model.config import read_config
from lexsearch.model.vocab import caption_words
from lexsearch.train.words import CaptionWords


class _Model:
    """What CaptionWords touches of a LexVLA: its config's record and ``set_caption_words``."""

    def __init__(self, words=()):
        self.config = SimpleNamespace(caption_words=sorted(words))
        self.calls = 0

    def set_caption_words(self, words):
        self.config.caption_words = sorted(set(words))
        self.calls += 1


_ONE = SimpleNamespace(distributed=False, is_main=True)


def test_a_caption_folder_is_recorded_before_the_first_step():
    model = _Model()
    pairs = SimpleNamespace(captions=["A red Star.", "a blue circle"])
    words = CaptionWords.start(model, pairs)
    assert model.config.caption_words == ["a", "blue", "circle", "red", "star"]
    words.see(["a green cat"])  # a folder's words are all known already
    words.record(_ONE)
    assert "cat" not in model.config.caption_words and model.calls == 1


def test_a_stream_is_recorded_as_its_batches_go_by():
    model = _Model()
    words = CaptionWords.start(model, SimpleNamespace())  # no .captions: a shard stream
    assert model.config.caption_words == []
    words.see(["a red star", "A green Cat"])
    words.record(_ONE)
    assert model.config.caption_words == ["a", "cat", "green", "red", "star"]
    words.record(_ONE)
    assert model.calls == 1  # nothing new: the mask is not rebuilt


def test_resuming_keeps_the_words_recorded_so_far():
    model = _Model(["dog"])
    words = CaptionWords.start(model, SimpleNamespace())
    words.see(["a cat"])
    words.record(_ONE)
    assert model.config.caption_words == ["a", "cat", "dog"]


def test_fine_tuning_a_model_with_no_record_records_none():
    """Its first captions are unknown: recording only the new ones would call the older words unknown."""
    model = _Model()
    words = CaptionWords.start(model, SimpleNamespace(captions=["a red star"]), init="/models/old")
    words.see(["a red star"])
    words.record(_ONE)
    assert model.config.caption_words == [] and model.calls == 0


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from lexsearch.data.toyworld import generate_toy_world

    root = tmp_path_factory.mktemp("toy")
    generate_toy_world(root, 24, seed=0)
    return root


def test_train_writes_the_words_and_margins_into_the_checkpoint(toy, tiny_model_dir, tmp_path):
    """A short fine-tune of a checkpoint that has a record (no LM pretraining: the bases are the test's
    random tiny ones): the record grows by the training captions' words, never the held-out ones'."""
    import json

    from lexsearch.data.pairs import load_pairs, split_holdout
    from lexsearch.model.checkpoint import load_checkpoint
    from lexsearch.model.config import CONFIG_FILE
    from lexsearch.model.vocab import Vocabulary
    from lexsearch.train.config import train_config
    from lexsearch.train.loop import train

    path = tiny_model_dir / CONFIG_FILE
    payload = json.loads(path.read_text())
    payload["model"]["caption_words"] = ["zebra"]
    path.write_text(json.dumps(payload))
    out = tmp_path / "run"
    config = train_config(
        "tiny",
        data=str(toy),
        out=str(out),
        init=str(tiny_model_dir),
        batch_size=8,
        max_steps=2,
        num_workers=0,
        val_holdout=8,
    )
    train(config)
    recorded = read_config(out)
    train_pairs, val = split_holdout(load_pairs(str(toy)), 8, seed=config.seed)
    assert recorded.caption_words == sorted(caption_words(train_pairs.captions) | {"zebra"})
    margins = recorded.word_margins
    assert margins["n"] == len(val.images) == 8
    assert margins["p0"] <= margins["p1"] <= margins["p5"] <= margins["p50"]
    model = load_checkpoint(out)
    vocab = Vocabulary(model.tokenizer.backend_tokenizer, model.config.vocab_ids)
    masked = {vocab.words[c] for c in (model.keep == 0).nonzero().ravel().tolist()}
    assert {"focus", "lies", "important", "words"} <= masked
