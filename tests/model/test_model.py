"""The LexVLA model: read-outs, sparsification, trainable parts, checkpoints, vocabulary, presets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from lexsearch.errors import ModelError, UsageError
from lexsearch.model import Encoder, load_checkpoint, preset_config, save_checkpoint
from lexsearch.model.encoder import autocast, parse_sparsify, pick_device, sparsify_vectors
from lexsearch.model.lexvla import elu1p, lexical
from lexsearch.model.vocab import display_words, filter_vocabulary


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture
def model(tiny_model_dir):
    torch.manual_seed(0)
    return load_checkpoint(tiny_model_dir)


def _pixels(model, n=3):
    enc = Encoder(model, torch.device("cpu"))
    return torch.from_numpy(np.stack([enc.preprocess(im) for im in _images(n)]))


def test_elu1p_is_elu_plus_one_not_log1p():
    x = torch.tensor([-2.0, 0.0, 3.0])
    assert torch.allclose(elu1p(x), torch.tensor([math.exp(-2.0), 1.0, 4.0]))


def test_vectors_are_nonnegative_with_unit_norm(model):
    s_img, d_img = model.encode_image(_pixels(model))
    ids, mask = model.tokenize(["a red circle", "two large blue squares at the top"])
    s_txt, d_txt = model.encode_text(ids, mask)
    for s in (s_img, s_txt, model.patch_vectors(_pixels(model, 1))[0]):
        assert (s > 0).all()  # elu1p is positive everywhere: sparsity comes only from the threshold
        assert torch.allclose(s.norm(dim=-1), torch.ones(s.shape[0]), atol=1e-5)
    assert s_img.shape == (3, model.vocab_size) and s_txt.shape == (2, model.vocab_size)
    assert torch.allclose(d_img.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_max_before_elu1p_equals_elu1p_then_max(model):
    z = model.image_tokens(_pixels(model))
    logits = z @ model.z_img.T  # (B, T, V)
    after = torch.nn.functional.normalize(elu1p(logits).max(dim=1).values, dim=-1)
    s_img, _ = model.encode_image(_pixels(model))
    assert torch.allclose(s_img, after, atol=1e-6)
    assert torch.allclose(lexical(logits.max(1).values), after, atol=1e-6)


def test_shared_prefix_cache_is_exact(model):
    ids, mask = model.tokenize(["a red circle", "a small green triangle on a striped background"])
    shared, _ = model.encode_text(ids, mask, share_prefix=True)
    full, _ = model.encode_text(ids, mask, share_prefix=False)
    assert torch.allclose(shared, full, atol=1e-5)


def test_long_text_is_cut_but_prompt_end_kept(model):
    ids, mask = model.tokenize(["red " * 200])
    row = model.prefix_ids.tolist() + ids[0, : int(mask.sum())].tolist()
    text = model.tokenizer.decode(row, skip_special_tokens=True)
    assert text.count("red") == model.config.max_text_tokens
    # Compared without spaces: the tiny tokenizer keeps punctuation in pieces of its own, and decoding
    # joins pieces with spaces (`words :"`); the ids themselves are what the LM sees.
    squeeze = lambda s: "".join(s.split())
    assert squeeze(text).endswith(squeeze(model.config.prompt_parts()[1]))


def test_threshold_and_topk_keep_what_they_should():
    v = torch.tensor([[0.9, 0.3, 0.2, 0.1], [0.1, 0.1, 0.8, 0.6]])
    thr = sparsify_vectors(v, "threshold", 0)  # 1/sqrt(4) = 0.5: keep > 0.5 only
    np.testing.assert_allclose(thr.toarray(), [[0.9, 0, 0, 0], [0, 0, 0.8, 0.6]])
    top = sparsify_vectors(v, "topk", 2)
    np.testing.assert_allclose(top.toarray(), [[0.9, 0.3, 0, 0], [0, 0, 0.8, 0.6]])
    assert sparsify_vectors(v, "none", 0).nnz == 8
    # A model's own cut-off replaces 1/sqrt(V); the torch and numpy rules agree.
    from lexsearch.model.vectors import sparsify_array

    own = [[0.9, 0.3, 0.2, 0], [0, 0, 0.8, 0.6]]
    np.testing.assert_allclose(sparsify_vectors(v, "threshold", 0, cut=0.15).toarray(), own)
    np.testing.assert_allclose(sparsify_array(v.numpy(), "threshold", 0, cut=0.15).toarray(), own)
    assert parse_sparsify("topk:7", "threshold", 512) == ("topk", 7)
    assert parse_sparsify(None, "threshold", 512) == ("threshold", 512)
    with pytest.raises(UsageError):
        parse_sparsify("topk:x", "threshold", 512)


def test_exactly_the_trainable_parameters_learn(model):
    model.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    groups = {"adapter", "z_img", "lora", "log_logit_scale", "dense_img", "dense_txt"}
    assert all(any(g in n for g in groups) for n in trainable)
    assert any("lora_" in n for n in trainable) and "z_img" in trainable and "log_logit_scale" in trainable
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    frozen_before["z_txt"] = model.z_txt.clone()
    trained_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    # Two steps: LoRA's B starts at zero, so A's gradient is zero until B has moved once.
    for step in range(2):
        opt.zero_grad()
        s_img, d_img = model.encode_image(_pixels(model, 2))
        ids, mask = model.tokenize(["a red circle", "a blue star"])
        s_txt, d_txt = model.encode_text(ids, mask)
        logits = model.logit_scale() * s_img @ s_txt.T
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(2)) + (d_img @ d_txt.T).sum()
        loss.backward()
        for n, p in model.named_parameters():
            if not p.requires_grad:
                assert p.grad is None, n
            elif step == 1 or "lora_A" not in n:
                assert p.grad is not None and p.grad.abs().sum() > 0, n
        opt.step()
    for n, p in model.named_parameters():
        if n in frozen_before:
            assert torch.equal(p, frozen_before[n]), n
    assert torch.equal(model.z_txt, frozen_before["z_txt"])
    changed = [
        n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, trained_before[n])
    ]
    assert set(changed) == trainable


def test_logit_scale_is_clamped_at_100(model):
    assert model.logit_scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.log_logit_scale.fill_(10.0)
    assert model.logit_scale().item() == pytest.approx(100.0)


def test_checkpoint_round_trip_gives_identical_vectors(tiny_model_dir, tmp_path):
    model = load_checkpoint(tiny_model_dir)
    with torch.no_grad():  # make the trained parts differ from any fresh initialisation
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    saved = save_checkpoint(model, tmp_path / "copy", root=tiny_model_dir)
    assert not list(saved.glob("*.bin")) and not list(saved.glob("*.pt"))  # no pickle anywhere
    a = Encoder(model, torch.device("cpu"))
    b = Encoder.load(saved, device="cpu")
    imgs, texts = _images(2), ["a red circle", "a large yellow star"]
    for x, y in (
        (a.encode_images(imgs), b.encode_images(imgs)),
        (a.encode_texts(texts), b.encode_texts(texts)),
    ):
        assert (x.sparse != y.sparse).nnz == 0
        np.testing.assert_array_equal(x.dense, y.dense)
    stored = json.loads((saved / "config.json").read_text())["model"]
    assert stored["vocab_ids"] == model.config.vocab_ids and stored["lm_model"] == "base/lm"


def test_mismatched_checkpoint_is_refused(tiny_model_dir, tmp_path):
    cfg_path = tiny_model_dir / "config.json"
    payload = json.loads(cfg_path.read_text())
    payload["model"]["vocab_ids"] = payload["model"]["vocab_ids"][:-3]  # vocabulary no longer matches weights
    cfg_path.write_text(json.dumps(payload))
    with pytest.raises(ModelError, match="shape"):
        load_checkpoint(tiny_model_dir)
    payload["model"]["vocab_ids"] = [10_000_000]
    cfg_path.write_text(json.dumps(payload))
    with pytest.raises(ModelError, match="vocabulary"):
        load_checkpoint(tiny_model_dir)
    with pytest.raises(ModelError, match="not a lexsearch model"):
        load_checkpoint(tmp_path)


def test_vocabulary_filter_drops_special_byte_and_punctuation_pieces():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    pieces = [
        "<unk>",
        "<s>",
        "<0x0A>",
        "<0xFF>",
        "\u2581",
        "...",
        "\u2581,",
        "42",
        "\u2581horse",
        "ing",
        "\u2581caf\u00e9",
        "\u2581\u65e5\u672c",
        "\u2581\u0434\u043e\u043c",
        "\u2581x2",
        "\u2581middle.",
        "\u2581Horse",
    ]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({p: i for i, p in enumerate(pieces)}, unk_token="<unk>")),
        unk_token="<unk>",
        bos_token="<s>",
    )
    kept = filter_vocabulary(tok)
    # Punctuation glued to a word, digits, accents and capitalised twins are not words (ascii-lower).
    assert [pieces[i] for i in kept] == ["\u2581horse", "ing"]
    assert display_words(tok.convert_ids_to_tokens(kept)) == ["horse", "##ing"]
    latin = filter_vocabulary(tok, "latin")  # the earlier, wider rule stays available
    assert [pieces[i] for i in latin] == [
        "\u2581horse",
        "ing",
        "\u2581caf\u00e9",
        "\u2581x2",
        "\u2581middle.",
        "\u2581Horse",
    ]


def test_encoder_words_and_decode(tiny_model_dir):
    enc = Encoder.load(tiny_model_dir, device="cpu")
    assert "circle" in enc.words(range(enc.vocab_size))
    cols = enc.word_terms("circle")
    assert enc.words(cols) == ["circle"]
    row = np.zeros(enc.vocab_size, dtype=np.float32)
    row[cols[0]] = 0.9
    assert enc.decode(row, top_k=3) == [("circle", pytest.approx(0.9))]
    out = enc.encode_texts(["a red circle"] * 3, batch_size=2)
    assert out.sparse.shape == (3, enc.vocab_size) and out.dense.shape == (3, enc.dense_dim)
    assert enc.encode_patches(_images(1)[0]).shape == (enc.grid[0] * enc.grid[1], enc.vocab_size)
    words = enc.encode_words(["circle", "purple"])
    assert words.sparse.shape == (2, enc.vocab_size)


def test_device_selection_and_autocast_dtype():
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert pick_device("auto").type in ("cpu", "mps")
        with pytest.raises(UsageError, match="CUDA"):
            pick_device("cuda")
    with pytest.raises(UsageError):
        pick_device("tpu")
    with pytest.warns(UserWarning) if not torch.cuda.is_available() else _nullcontext():
        ctx = autocast(torch.device("cuda"))
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
    assert not isinstance(autocast(torch.device("cpu")), torch.autocast)


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


def test_presets_name_the_papers_models():
    paper = preset_config("paper")
    assert paper.vision_model == "facebook/dinov2-base" and paper.lm_model == "meta-llama/Llama-2-7b-hf"
    assert paper.sparsify == "threshold" and paper.dense_dim == 0 and paper.init_temperature == 0.07
    assert (
        'lies on important words:"man", "riding", "white", "horse".' in paper.prompt
        and paper.prompt_end == ""
    )
    assert preset_config("small").vision_model.startswith("facebook/dinov2")
    assert preset_config("tiny").vision_config and preset_config("tiny").lm_config
    with pytest.raises(UsageError):
        preset_config("huge")


def test_paper_adapter_has_the_papers_size():
    from lexsearch.model.lexvla import Adapter

    cfg = preset_config("paper")
    adapter = Adapter(768, 4096, cfg.adapter_heads, cfg.adapter_mlp_ratio, cfg.adapter_hidden)
    n = sum(p.numel() for p in adapter.parameters())
    assert 16e6 < n < 18e6  # the paper: ~17M


def test_clip_vision_backbone_is_selectable(tmp_path):
    """vision_type="clip" loads a CLIP vision tower through transformers (a tiny one from a config here)."""
    from conftest import TINY_TEXTS
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from lexsearch.model import build_model
    from lexsearch.tiny.builder import build_tiny_bases

    build_tiny_bases(
        tmp_path / "base", TINY_TEXTS, preset_config("tiny").vision_config, preset_config("tiny").lm_config
    )
    clip = CLIPVisionModel(
        CLIPVisionConfig(
            image_size=64,
            patch_size=8,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
        )
    )
    clip.save_pretrained(tmp_path / "clip")
    cfg = preset_config(
        "tiny",
        vision_type="clip",
        vision_model=str(tmp_path / "clip"),
        lm_model=str(tmp_path / "base" / "lm"),
    )
    model = build_model(cfg)
    assert type(model.vision).__name__ == "CLIPVisionModel"
    s_img, _ = model.encode_image(torch.zeros(2, 3, 64, 64))
    assert s_img.shape == (2, model.vocab_size)
    assert model.patch_vectors(torch.zeros(1, 3, 64, 64)).shape == (1, 64, model.vocab_size)


def test_saving_again_does_not_copy_the_bases_again(tiny_model_dir, tmp_path, monkeypatch):
    import lexsearch.model.checkpoint as ckpt

    model = load_checkpoint(tiny_model_dir)
    copies = []
    real_copytree = ckpt.shutil.copytree
    monkeypatch.setattr(
        ckpt.shutil, "copytree", lambda src, dest: copies.append(dest) or real_copytree(src, dest)
    )
    out = tmp_path / "run"  # a fine-tune: its bases live in another checkpoint folder
    save_checkpoint(model, out, root=tiny_model_dir)
    first = len(copies)
    assert first >= 2 and (out / "base" / "lm" / "config.json").is_file()
    save_checkpoint(model, out, root=tiny_model_dir)
    save_checkpoint(model, out, root=tiny_model_dir)
    assert len(copies) == first  # the frozen bases were copied once
    assert Encoder.load(out, device="cpu").vocab_size == model.vocab_size
