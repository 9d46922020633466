"""What only the real sizes and a real SentencePiece tokenizer show: parameter counts at paper size (meta
device), the vocabulary filter, the prompt's tokenisation, word detection, float32 codebook logits."""

from __future__ import annotations

import contextlib
import json
import logging
import re

import numpy as np
import pytest
import torch
from realtok import hub_style_tokenizer, real_checkpoint, real_tokenizer

from lexsearch.model import Encoder, load_checkpoint, preset_config
from lexsearch.model.vocab import Vocabulary, filter_vocabulary

PAPER_V = 17149


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory):
    return real_checkpoint(tmp_path_factory.mktemp("real-tok"))


@pytest.fixture(scope="module")
def real_model(real_dir):
    torch.manual_seed(0)
    return load_checkpoint(real_dir)


def test_paper_parameter_counts_on_the_meta_device():
    from lexsearch.model.architectures import meta_model, parameter_counts

    model = meta_model(preset_config("paper"), real_tokenizer())
    assert model.z_img.is_meta  # no memory was spent on 7B parameters
    n = parameter_counts(model)
    v = model.vocab_size
    assert 16.5e6 < n["adapter"] < 17.5e6  # the paper: ~17M
    assert n["image_codebook"] == v * 4096
    assert 19.5e6 < n["lora"] < 20.5e6 and 0.0029 < n["lora"] / n["lm"] < 0.0031  # the paper: 0.30%
    assert 6.7e9 < n["lm"] < 6.8e9 and 86e6 < n["vision"] < 87e6  # Llama-2-7B, DINOv2 ViT-B/14
    # Trainable: adapter, Z_img, LoRA and the temperature (the paper: 109M); everything else frozen.
    assert n["trainable"] == n["adapter"] + n["image_codebook"] + n["lora"] + 1
    assert n["frozen"] == n["lm"] + n["vision"]
    assert 108e6 < n["trainable"] < 110e6


def test_shipped_architectures_are_the_published_ones():
    from lexsearch.model.architectures import architecture

    small, paper = preset_config("small"), preset_config("paper")
    assert architecture(small.vision_model)["hidden_size"] == 384
    assert architecture(paper.vision_model)["hidden_size"] == 768
    tiny_llama, llama = architecture(small.lm_model), architecture(paper.lm_model)
    assert (
        tiny_llama["hidden_size"],
        tiny_llama["num_hidden_layers"],
        tiny_llama["num_key_value_heads"],
    ) == (
        2048,
        22,
        4,
    )
    assert (llama["hidden_size"], llama["num_hidden_layers"], llama["intermediate_size"]) == (4096, 32, 11008)
    assert architecture(paper.lm_model, layers=2)["num_hidden_layers"] == 2


def test_vocabulary_filter_on_a_llama2_family_tokenizer_lands_near_the_papers_size():
    tok = real_tokenizer()
    kept = filter_vocabulary(tok)
    assert abs(len(kept) - PAPER_V) / PAPER_V < 0.03
    pieces = tok.convert_ids_to_tokens(kept)
    assert all(re.fullmatch("\u2581?[a-z]+", p) for p in pieces)
    assert {"\u2581horse", "\u2581beach", "ing"} <= set(pieces)
    assert "\u2581Horse" not in pieces and "\u2581The" not in pieces  # case twins: queries lower-case


def test_vocabulary_size_is_logged_and_written_in_the_checkpoint(real_dir, tmp_path, caplog):
    stored = json.loads((real_dir / "config.json").read_text())
    assert (
        stored["vocab_size"] == len(stored["model"]["vocab_ids"]) == len(filter_vocabulary(real_tokenizer()))
    )
    assert stored["model"]["vocab_filter"] == "ascii-lower"
    with caplog.at_level(logging.INFO, logger="lexsearch.model.checkpoint"):
        real_checkpoint(tmp_path / "again")
    assert any(f"{stored['vocab_size']} of 32000" in r.getMessage() for r in caplog.records)


TEXTS = ["a red circle", "Horse on the beach", "two dogs, running.", "x" * 3 + " middle. end"]


def test_prompt_ids_are_the_whole_prompt_tokenised(real_model):
    tok = real_model.tokenizer
    ids, mask = real_model.tokenize(TEXTS)
    for i, text in enumerate(TEXTS):
        row = real_model.prefix_ids.tolist() + ids[i, : int(mask[i].sum())].tolist()
        assert row == tok(real_model.config.prompt.replace("[TEXT]", text))["input_ids"]
    # The text right after the opening quote carries no word marker of its own: `"a`, not `" a`.
    whole = tok.convert_ids_to_tokens(real_model.prefix_ids.tolist() + ids[0, : int(mask[0].sum())].tolist())
    assert whole[-11:-7] == ["\u2581of", '\u2581"', "a", "\u2581red"]


def test_shared_prefix_cache_is_exact_with_the_real_tokenizer(real_model):
    ids, mask = real_model.tokenize(TEXTS)
    with torch.no_grad():
        shared, _ = real_model.encode_text(ids, mask, share_prefix=True)
        full, _ = real_model.encode_text(ids, mask, share_prefix=False)
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-4)


def test_a_bare_word_marker_is_not_part_of_a_word(real_model):
    """SentencePiece writes "ire" as a bare ▁ + ire: still one vocabulary piece, so the word-level path."""
    vocab = Vocabulary(real_tokenizer().backend_tokenizer, real_model.config.vocab_ids)
    assert vocab.backend.encode("ire", add_special_tokens=False).tokens == ["\u2581", "ire"]  # the pitfall
    assert vocab.pieces("ire") == [vocab.backend.token_to_id("ire")]
    enc = Encoder(real_model, torch.device("cpu"))
    assert enc.vocab.pieces("ire") == vocab.pieces("ire")
    cols = enc.word_terms("ire")
    with torch.no_grad():
        expected = real_model.word_vectors(torch.tensor(cols))[0].numpy()
    got = enc.encode_words(["ire"], sparsify="none").sparse.toarray()[0]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)  # the word-level vector [paper]


def test_word_pieces_with_llama2s_hub_normaliser(real_model):
    """Llama 2's hub tokenizer.json prepends ▁ itself: " horse" would read ▁▁ + hor + se."""
    hub = Vocabulary(hub_style_tokenizer().backend_tokenizer, real_model.config.vocab_ids)
    assert hub.backend.encode(" horse", add_special_tokens=False).tokens[0] == "\u2581\u2581"
    assert hub.pieces("horse") == [hub.backend.token_to_id("\u2581horse")]
    assert hub.word_terms("horse") == Vocabulary(real_model.tokenizer.backend_tokenizer, hub.ids).word_terms(
        "horse"
    )


def test_query_rules_with_the_real_tokenizer(real_model):
    from lexsearch.search.parse import parse_query, query_word_clauses, resolve_operators

    vocab = Vocabulary(real_tokenizer().backend_tokenizer, real_model.config.vocab_ids)
    clauses = query_word_clauses(parse_query("the Horse on a beach"), vocab.word_terms)
    assert sorted(c.text for c in clauses) == ["Horse", "beach"]  # no clause for the, on, a
    horse = next(c for c in clauses if c.text == "Horse")
    assert horse.terms == tuple(vocab.word_terms("horse"))
    filters = resolve_operators(parse_query("dog +Beach -Night"), vocab.word_terms)
    assert filters.must[0].terms == tuple(vocab.word_terms("beach"))
    assert [c.terms for c in filters.exclude] == [tuple(vocab.word_terms("night"))]


class _Recorder:
    def __init__(self) -> None:
        self.depth, self.calls = 0, 0

    def __call__(self, device):
        @contextlib.contextmanager
        def ctx():
            self.depth += 1
            self.calls += 1
            try:
                yield
            finally:
                self.depth -= 1

        return ctx()


def test_encode_words_runs_under_the_same_autocast_as_encode_texts(real_model, monkeypatch):
    import lexsearch.model.encoder as encoder_module

    enc = Encoder(real_model, torch.device("cpu"))
    recorder = _Recorder()
    monkeypatch.setattr(encoder_module, "autocast", recorder)
    seen = []
    for name in ("word_vectors", "encode_text"):
        original = getattr(real_model, name)

        def spy(*args, _original=original, **kwargs):
            seen.append(recorder.depth)
            return _original(*args, **kwargs)

        monkeypatch.setattr(real_model, name, spy)
    enc.encode_words(["horse", "skateboarding"])  # one piece, then several: both paths
    assert len(seen) == 2 and all(d > 0 for d in seen)


def test_codebook_logits_stay_float32_under_bf16_autocast(real_model, monkeypatch):
    torch.manual_seed(0)
    z = torch.randn(2, 5, real_model.z_img.shape[1])
    h = torch.randn(2, real_model.z_txt.shape[1])
    monkeypatch.setattr(real_model, "image_tokens", lambda pixels: z)
    monkeypatch.setattr(real_model, "text_hidden", lambda ids, mask, share_prefix=True: h)
    ids, mask = real_model.tokenize(["a red circle", "a dog"])
    with torch.no_grad():
        ref_img = real_model.encode_image(None)[0]
        ref_txt = real_model.encode_text(ids, mask)[0]
        patches = real_model.patch_vectors(None)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            img = real_model.encode_image(None)[0]
            txt = real_model.encode_text(ids, mask)[0]
            bf_patches = real_model.patch_vectors(None)
    for got, ref in ((img, ref_img), (txt, ref_txt), (bf_patches, patches)):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)


def test_a_student_distilled_over_the_real_tokenizer_reads_what_it_was_taught(real_dir, tmp_path):
    """The student's pieces come from the same SentencePiece model, for distillation and queries alike: a
    first word gets its ``▁`` piece (as " horse" inside a caption), no bare ``▁`` piece, and the numpy
    runtime gives the model's kind of vector."""
    import shutil

    from lexsearch.model.lazy import LazyEncoder
    from lexsearch.model.student import StudentEncoder, token_ids
    from lexsearch.train.distill import DistillConfig, distill

    model_dir = tmp_path / "model"
    shutil.copytree(real_dir, model_dir)
    texts = ["a white horse on a beach", "Two red apples.", "a dog next to a white horse"]
    distill(model_dir, texts, DistillConfig(minutes=0.2, max_epochs=2, variants=1, device="cpu", width=32))
    backend = LazyEncoder(model_dir, device="cpu").vocab.backend  # what a query's encoder reads with
    tok = backend.get_vocab()
    ids = token_ids(backend, ["horse", "white horse", "Horse!"], 32)
    assert ids[0] == [tok["▁horse"]] and ids[1][-1] == tok["▁horse"]  # the caption word's own piece
    assert all(tok.get("▁") not in row for row in ids)
    student = StudentEncoder.load(model_dir, backend)
    enc = student.encode_texts(["white horse", "Horse!"])
    s = enc.sparse.toarray()
    assert s.shape[1] == student.vocab_size and (s >= 0).all() and s.any(axis=1).all()
    assert enc.dense.shape == (2, 8) and np.allclose(np.linalg.norm(enc.dense, axis=1), 1, atol=1e-5)
