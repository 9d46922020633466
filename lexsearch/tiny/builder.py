"""Tiny bases built offline: a tokenizer trained on the given text, a random tiny ViT and a random tiny Llama.

They stand in for DINOv2 and Llama in tests and the demo. :mod:`lexsearch.tiny.bases` pretrains them
briefly before LexVLA training; here they are only built and saved, as ``save_pretrained`` folders, so the
rest of the code loads them exactly as it loads hub models (``from_pretrained`` with a local path).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from lexsearch.model.config import PAPER_PROMPT

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]


def build_tokenizer(texts: Iterable[str], vocab_size: int = 2000):
    """A SentencePiece-style BPE tokenizer (``▁`` marks word starts, as in Llama) trained on ``texts``.

    Works for any small corpus: the BPE trainer stops merging when the corpus has no more pairs, so the
    vocabulary is at most ``vocab_size`` and contains every character seen. The paper's prompt is added to
    the corpus so the prompt's words are whole pieces.

    Text is lowercased and punctuation is split off words [choice]: captions in natural phrasing ("A red
    heart.", "Red heart, blue ring") would otherwise give a tiny vocabulary "Red", "red" and "heart." as
    separate words, splitting one word's evidence over several dimensions (Llama's 32,000 pieces keep
    punctuation apart too).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    # Words and runs of punctuation become separate word-initial pieces ("\u2581heart", "\u2581."). Runs stay
    # whole (`",` `:"` `".`) so the prompt's opening quote, its separators and its closing quote remain
    # different pieces, as in Llama: a 2-layer LM cannot tell one shared quote piece's roles apart.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation("contiguous"),
            pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    corpus = list(texts) + [PAPER_PROMPT.replace("[TEXT]", "")]
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def random_tiny_bases(tokenizer, vision_config: dict, lm_config: dict, seed: int = 0):
    """(vision, lm): a randomly initialised DINOv2-architecture ViT and Llama sized by the configs, the LM's
    vocabulary and special ids taken from ``tokenizer``. Deterministic for a seed."""
    from transformers import Dinov2Config, Dinov2Model, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    vision = Dinov2Model(Dinov2Config(**vision_config))
    lm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **lm_config,
        )
    )
    return vision, lm


def build_tiny_bases(
    out_dir: Path,
    texts: Iterable[str],
    vision_config: dict,
    lm_config: dict,
    seed: int = 0,
    vocab_size: int = 2000,
) -> tuple[Path, Path]:
    """Build and save a random tiny DINOv2-architecture ViT and a tiny Llama (+ tokenizer) under ``out_dir``.

    Returns (vision_dir, lm_dir). Deterministic for a seed.
    """
    from lexsearch.model.checkpoint import quiet_transformers

    quiet_transformers()
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(texts, vocab_size=vocab_size)
    vision, lm = random_tiny_bases(tokenizer, vision_config, lm_config, seed)
    vision_dir, lm_dir = out_dir / "vision", out_dir / "lm"
    vision.save_pretrained(vision_dir)
    lm.save_pretrained(lm_dir)
    tokenizer.save_pretrained(lm_dir)
    return vision_dir, lm_dir


def build_tiny_checkpoint(out_dir: Path, texts: Iterable[str], seed: int = 0, **overrides) -> Path:
    """A complete, untrained ``tiny`` checkpoint in ``out_dir`` (bases built from configs; no download).

    Used by tests and as the starting point of tiny training. ``overrides`` are ModelConfig fields.
    """
    from lexsearch.model.checkpoint import build_model, save_checkpoint
    from lexsearch.model.presets import preset_config

    out_dir = Path(out_dir)
    config = preset_config("tiny", **overrides)
    build_tiny_bases(out_dir / "base", texts, config.vision_config, config.lm_config, seed=seed)
    torch.manual_seed(seed)
    model = build_model(config, root=out_dir)
    return save_checkpoint(model, out_dir, root=out_dir)
