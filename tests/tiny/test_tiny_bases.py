"""Tiny-base pretraining: cached, deterministic, makes the LM answer the prompt; the toy validation on it."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from lexsearch.eval import toy as M
from lexsearch.tiny.bases import pretrain_tiny_bases, write_pretrained_checkpoint
from lexsearch.tiny.config import PretrainConfig
from lexsearch.tiny.lm import PromptFormat, important_words, pretrain_lm
from lexsearch.tiny.vision import load_vision_targets

# Sizes small enough for a test: a few LM steps, one ViT epoch on a dozen images.
FAST = PretrainConfig(lm_steps=4, lm_batch_size=4, vit_epochs=1, vit_batch_size=8, vit_max_images=12)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from lexsearch.data.toyworld import generate_toy_world

    return generate_toy_world(tmp_path_factory.mktemp("toy"), 16, seed=3)


def _tiny_config():
    from lexsearch.model.presets import preset_config

    cfg = preset_config("tiny")
    # Smaller still than the tiny preset, so each pretraining in these tests takes a second or two.
    cfg.vision_config = dict(cfg.vision_config, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    cfg.lm_config = dict(
        cfg.lm_config,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    return cfg


def test_important_words_drop_stop_words_and_repeats():
    assert important_words("A picture of a red circle and a Red star.") == ["red", "circle", "star"]
    # Generic English function words, not a list read off the toy templates.
    caption = "There's a large Pink heart to the left of a small ring, next to the middle."
    assert important_words(caption) == ["large", "pink", "heart", "left", "small", "ring", "middle"]


def test_prompt_words_are_never_important():
    from lexsearch.tiny.lm import prompt_stop_words

    stop = prompt_stop_words(_tiny_config())
    assert {"focus", "lies", "important", "words"} <= set(stop)
    assert important_words("The important white horse lies.", stop) == ["white", "horse"]


def test_tokenizer_lowercases_and_keeps_punctuation_apart():
    from lexsearch.tiny.builder import build_tokenizer

    tok = build_tokenizer(["A red heart.", "Red heart, blue ring", "a blue ring in the middle."])
    pieces = tok.convert_ids_to_tokens(tok("Red heart, blue ring.", add_special_tokens=False)["input_ids"])
    assert pieces == ["\u2581red", "\u2581heart", "\u2581,", "\u2581blue", "\u2581ring", "\u2581."]
    # Runs of punctuation stay whole: the prompt's `:"` is not the quote that opens or closes a word.
    assert tok.convert_ids_to_tokens(tok('words:"red",', add_special_tokens=False)["input_ids"])[1:] == [
        '\u2581:"',
        "\u2581red",
        '\u2581",',
    ]
    assert "\u2581middle." not in tok.get_vocab() and "\u2581Red" not in tok.get_vocab()


def test_query_like_texts_are_some_of_the_captions_words(world):
    import numpy as np

    from lexsearch.data.pairs import load_folder
    from lexsearch.tiny.builder import build_tokenizer
    from lexsearch.tiny.lm import _lm_batch

    tok = build_tokenizer(load_folder(world.root).captions)
    fmt = PromptFormat(tok, _tiny_config())
    caption = "A picture of a red circle and a blue star."
    rng = np.random.default_rng(0)
    ids, _mask, _answer, (pos, hot) = _lm_batch(fmt, [caption] * 8, FAST.stop_words, rng, 0, query_share=1.0)
    content = {tok.convert_tokens_to_ids(f"\u2581{w}") for w in ("red", "circle", "blue", "star")}
    for row, p, h in zip(ids, pos, hot):
        text = row[: p + 1 - len(fmt.suffix)].tolist()
        targets = set(np.flatnonzero(h.numpy()).tolist())
        assert targets and targets <= content
        assert {t for t in text if t in content} == targets  # the text is exactly its answer words


@pytest.mark.parametrize("tokenizer", ["tiny", "real"])
def test_answers_name_the_important_words_in_order_of_mention(world, tokenizer):
    """As in the paper's demonstration ("man", "riding", "white", "horse"): what a text names first is
    answered first, so the read-out learns that salience (shuffled answers left it to chance). On the tiny
    tokenizer and on Mistral's real SentencePiece one (the Llama-2 family's ``\u2581`` pieces)."""
    from lexsearch.data.pairs import load_folder
    from lexsearch.tiny.builder import build_tokenizer
    from lexsearch.tiny.lm import _lm_batch

    if tokenizer == "real":
        from realtok import real_tokenizer

        tok = real_tokenizer()
    else:
        tok = build_tokenizer(load_folder(world.root).captions)
    fmt = PromptFormat(tok, _tiny_config())
    caption = "A picture of a blue star and a red circle."
    words = ("blue", "star", "red", "circle")
    content = [fmt.word_ids(w)[0] for w in words]
    assert tok.convert_ids_to_tokens(content) == [f"\u2581{w}" for w in words]
    ids, _mask, answer, _ = _lm_batch(
        fmt, [caption] * 8, FAST.stop_words, np.random.default_rng(0), 0, query_share=0.0
    )
    for row, in_answer in zip(ids, answer):
        said = [t for t in row[in_answer].tolist() if t in content]
        assert said == content


def test_prompt_sequence_matches_the_models_tokenisation(world):
    from lexsearch.data.pairs import load_folder
    from lexsearch.tiny.builder import build_tokenizer

    cfg = _tiny_config()
    tok = build_tokenizer(load_folder(world.root).captions)
    fmt = PromptFormat(tok, cfg)
    ids, n_query = fmt.sequence("a red circle", ["red", "circle"])
    assert ids[:n_query] == fmt.query_ids("a red circle")
    # The answer starts with the word-initial piece of the first important word, as the read-out needs.
    assert ids[n_query] == tok.convert_tokens_to_ids("\u2581red")
    assert ids[-1] == tok.eos_token_id


def test_pretraining_is_cached_and_deterministic(world, tmp_path):
    cfg = _tiny_config()
    first = pretrain_tiny_bases(world.root, cfg, FAST, cache_root=tmp_path / "a")
    assert not first.cached and first.report["vit_images"] == 12
    again = pretrain_tiny_bases(world.root, cfg, FAST, cache_root=tmp_path / "a")
    assert again.cached and again.root == first.root  # second run starts at once
    other = pretrain_tiny_bases(world.root, cfg, FAST, cache_root=tmp_path / "b")
    assert other.root.name == first.root.name  # same inputs, same key
    from safetensors.torch import load_file

    for sub in ("vision", "lm"):
        a, b = (
            load_file(str(first.root / sub / "model.safetensors")),
            load_file(str(other.root / sub / "model.safetensors")),
        )
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    changed = pretrain_tiny_bases(world.root, cfg, replace(FAST, seed=1), cache_root=tmp_path / "a")
    assert changed.root != first.root  # the seed is part of the key


def test_lm_pretraining_makes_the_read_out_name_content_words(world):
    """Cheap version of the LM stand-in: a content word is the next token after the prompt more often."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lexsearch.data.pairs import load_folder
    from lexsearch.tiny.builder import build_tokenizer

    cfg = _tiny_config()
    captions = load_folder(world.root).captions
    tok = build_tokenizer(captions)
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **cfg.lm_config))
    report = pretrain_lm(lm, tok, captions, cfg, replace(FAST, lm_steps=60, lm_batch_size=16, lm_lr=1e-2))
    assert report["lm_content_hit_after"] > report["lm_content_hit_before"]
    assert report["lm_content_hit_after"] >= 0.5


def test_vision_targets_follow_the_masks(world):
    cfg = _tiny_config()
    t = load_vision_targets(world.root, cfg, patch_size=8, max_images=4)
    assert t.pixels.shape == (4, 3, 64, 64) and t.patch_shape.shape == (4, 64)
    labels = world.labels()
    key = min(labels)
    present = {t.shapes[i - 1] for i in t.patch_shape[0].unique().tolist() if i > 0}
    assert present <= {s.shape for s in labels[key].shapes}
    # The colour of each patch is the colour of the shape under it.
    colour_of = {s.shape: s.colour for s in labels[key].shapes}
    for s_id, c_id in zip(t.patch_shape[0].tolist(), t.patch_colour[0].tolist()):
        assert (s_id == 0) == (c_id == 0)
        if s_id:
            assert colour_of[t.shapes[s_id - 1]] == t.colours[c_id - 1]
    assert load_vision_targets(world.root, cfg, 8, 4, image_keys=["nope.png"]) is None


def test_toy_validation_on_an_untrained_model(world, tmp_path):
    """End to end on a tiny checkpoint: every figure is there, and an untrained model is near chance."""
    from lexsearch.data.pairs import load_folder
    from lexsearch.model.checkpoint import load_checkpoint

    pairs = load_folder(world.root)
    ckpt = write_pretrained_checkpoint(
        tmp_path / "ckpt",
        world.root,
        pairs.captions,
        pairs.images,
        FAST,
        vision_config=_tiny_config().vision_config,
        lm_config=_tiny_config().lm_config,
        adapter_heads=2,
    )
    assert json.loads((ckpt / "base" / "pretrain.json").read_text())["n_captions"] == 16
    model = load_checkpoint(ckpt)
    out = M.toy_validation(model, pairs)
    assert out is not None and out["n_images"] == 16
    for key in (
        "explanation_precision",
        "random_codebook_control",
        "chance",
        "patchdis_miou",
        "patchdis_random",
    ):
        assert np.isfinite(out[key])
    assert model.training is False or model.training is True  # mode restored, no exception
    assert M.toy_validation(model, type("P", (), {"source": str(tmp_path), "images": ["x.png"]})()) is None
