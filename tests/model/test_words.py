"""What the model knows: the record of its training captions' words, the prompt-only words masked out of
every vector, and how a checkpoint keeps both (older checkpoints without the record work as before)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_TEXTS

from lexsearch.model.checkpoint import load_checkpoint, save_checkpoint
from lexsearch.model.config import CONFIG_FILE, PAPER_PROMPT, read_config
from lexsearch.model.vocab import Vocabulary, caption_words, prompt_only_columns, text_words, unknown_words


def test_text_words_are_lower_case_letter_runs():
    assert text_words("A red T-shirt, 2 Cats; über") == ["a", "red", "t", "shirt", "cats", "über"]
    assert caption_words(["a red star", "A blue star."]) == {"a", "red", "blue", "star"}


def test_unknown_words_are_those_no_caption_used():
    trained = {"red", "star", "shirt"}
    assert unknown_words(["Red", "cat", "t-shirt", "star", "cat", "2024"], trained) == ["cat", "t-shirt"]
    # No record (a checkpoint written before it): nothing to compare with, nothing is flagged.
    assert unknown_words(["cat"], []) == []


def _vocab(model) -> Vocabulary:
    return Vocabulary(model.tokenizer.backend_tokenizer, model.config.vocab_ids)


def test_the_prompt_words_no_caption_used_are_masked(tiny_model_dir):
    model = load_checkpoint(tiny_model_dir)
    assert model.config.caption_words == [] and bool((model.keep == 1).all())  # untrained: no record
    trained = caption_words(TINY_TEXTS)
    masked = model.set_caption_words(trained)
    words = set(_vocab(model).words[c] for c in masked)
    prompt_words = caption_words([PAPER_PROMPT.replace("[TEXT]", "")])
    # The tiny tokenizer has a whole piece for each prompt word: exactly those no caption says are masked.
    assert words == prompt_words - trained
    assert {"focus", "lies", "important", "words", "horse"} <= words
    assert "the" in prompt_words and "the" in trained and "the" not in words  # a caption word stays
    assert model.config.caption_words == sorted(trained)
    # A caption that says "white horse" makes both model words again.
    masked_after = model.set_caption_words(trained | {"white", "horse"})
    assert {"white", "horse"}.isdisjoint(_vocab(model).words[c] for c in masked_after)


def test_a_piece_a_caption_word_needs_is_not_masked(tiny_model_dir):
    model = load_checkpoint(tiny_model_dir)
    vocab = _vocab(model)
    focus = vocab.word_terms("focus")
    assert focus and set(focus) <= set(prompt_only_columns(vocab, PAPER_PROMPT, {"red"}))
    # Were "focus" a piece of a caption word, it would stay (here the caption word is "focus" itself).
    assert not set(focus) & set(prompt_only_columns(vocab, PAPER_PROMPT, {"red", "focus"}))
    assert prompt_only_columns(vocab, PAPER_PROMPT, []) == []


def test_masked_columns_are_zero_in_every_vector(tiny_model_dir):
    model = load_checkpoint(tiny_model_dir).eval()
    torch.manual_seed(0)
    pixels = torch.rand(2, 3, model.config.image_size, model.config.image_size)
    ids, mask = model.tokenize(["a red circle", "the focus lies on important words"])
    with torch.no_grad():
        before_img = model.encode_image(pixels)[0]
        before_txt = model.encode_text(ids, mask)[0]
    masked = model.set_caption_words(caption_words(TINY_TEXTS))
    assert masked
    with torch.no_grad():
        vectors = {
            "image": model.encode_image(pixels)[0],
            "text": model.encode_text(ids, mask)[0],
            "patches": model.patch_vectors(pixels).flatten(0, 1),
            "words": model.word_vectors(torch.arange(5)),
        }
    for name, v in vectors.items():
        assert float(v[:, masked].abs().max()) == 0.0, name
        assert torch.allclose(v.norm(dim=-1), torch.ones(v.shape[0]), atol=1e-5), name
    # The mask only takes those columns out: the rest is the same vector, renormalised.
    kept = model.keep > 0
    for before, after in ((before_img, vectors["image"]), (before_txt, vectors["text"])):
        rescaled = before[:, kept] / before[:, kept].norm(dim=-1, keepdim=True)
        assert torch.allclose(rescaled, after[:, kept], atol=1e-5)
    # Before the mask, the untrained model's vectors did hold those columns.
    assert float(before_txt[:, masked].min()) > 0


def test_the_record_round_trips_and_older_checkpoints_load_without_it(tiny_model_dir, tmp_path):
    model = load_checkpoint(tiny_model_dir)
    masked = model.set_caption_words(caption_words(TINY_TEXTS))
    model.config.word_margins = {"p1": 2.5, "n": 10}
    out = save_checkpoint(model, tmp_path / "saved", root=tiny_model_dir)
    config = read_config(out)
    assert config.caption_words == sorted(caption_words(TINY_TEXTS))
    assert config.word_margins == {"p1": 2.5, "n": 10}
    again = load_checkpoint(out)
    assert torch.equal(again.keep, model.keep) and int((again.keep == 0).sum()) == len(masked)

    # A config.json written before the record existed: it loads, knows no words, masks nothing.
    path = out / CONFIG_FILE
    payload = json.loads(path.read_text())
    del payload["model"]["caption_words"], payload["model"]["word_margins"]
    path.write_text(json.dumps(payload))
    old = load_checkpoint(out)
    assert old.config.caption_words == [] and old.config.word_margins == {}
    assert bool((old.keep == 1).all())


@pytest.mark.parametrize("record", [True, False])
def test_the_student_masks_what_the_model_masks(tiny_model_dir, record):
    """The torch-free query path zeroes the same columns (LazyEncoder hands the mask to the student)."""
    import numpy as np

    from lexsearch.model.lazy import LazyEncoder

    if record:
        path = tiny_model_dir / CONFIG_FILE
        payload = json.loads(path.read_text())
        payload["model"]["caption_words"] = sorted(caption_words(TINY_TEXTS))
        path.write_text(json.dumps(payload))
    lazy = LazyEncoder(tiny_model_dir, device="cpu", text_encoder="lm")
    keep = lazy._keep()
    if not record:
        assert keep is None
        return
    masked = np.flatnonzero(keep == 0)
    prompt_words = caption_words([PAPER_PROMPT.replace("[TEXT]", "")])
    assert {lazy.vocab.words[c] for c in masked} == prompt_words - caption_words(TINY_TEXTS)
    assert np.array_equal(masked, np.flatnonzero(load_checkpoint(tiny_model_dir).keep.numpy() == 0))
