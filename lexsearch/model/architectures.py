"""The public architecture configs of the ``small`` and ``paper`` presets' bases, and random models built
from them.

Hidden sizes, layer and head counts and vocabulary sizes are facts of the published configs (the hub's
``config.json`` of each model). Shipping them lets a model of the true size be built without the hub: on the
meta device to count parameters without memory, or with random weights to measure speed and memory (neither
depends on weight values), or cut to a few layers to run end to end on a CPU (``bench/real_size.py``).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

# facebook/dinov2-small and facebook/dinov2-base. The hub configs say image_size 518 (37 x 37 position
# embeddings, interpolated to the input); the presets run them at 224.
DINOV2_SMALL: dict[str, Any] = dict(
    hidden_size=384,
    num_hidden_layers=12,
    num_attention_heads=6,
    mlp_ratio=4,
    patch_size=14,
    image_size=518,
    layerscale_value=1.0,
    layer_norm_eps=1e-6,
    hidden_act="gelu",
    qkv_bias=True,
    drop_path_rate=0.0,
    use_swiglu_ffn=False,
)
DINOV2_BASE: dict[str, Any] = dict(DINOV2_SMALL, hidden_size=768, num_attention_heads=12)

# TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T: Llama-2 tokenizer, grouped-query attention.
TINYLLAMA_1B: dict[str, Any] = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=22,
    num_attention_heads=32,
    num_key_value_heads=4,
    vocab_size=32000,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    hidden_act="silu",
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)
# meta-llama/Llama-2-7b-hf: full multi-head attention, untied LM head.
LLAMA2_7B: dict[str, Any] = dict(
    TINYLLAMA_1B,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
)

# Gemma 3 270M (google/gemma-3-270m; the mini preset's text tower, from its PyPI GGUF): a tied LM head over a
# 262,144-piece SentencePiece vocabulary, one key/value head, and layers that alternate five sliding-window
# (512 tokens, local RoPE base 10k) with one global (RoPE base 1M) attention. ``model_type`` picks the class.
GEMMA3_270M: dict[str, Any] = dict(
    model_type="gemma3_text",
    hidden_size=640,
    intermediate_size=2048,
    num_hidden_layers=18,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=256,
    vocab_size=262144,
    max_position_embeddings=32768,
    sliding_window=512,
    layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 3,
    rms_norm_eps=1e-6,
    query_pre_attn_scalar=256,
    hidden_activation="gelu_pytorch_tanh",
    tie_word_embeddings=True,
    bos_token_id=2,
    eos_token_id=1,
    pad_token_id=0,
)

# Hub id -> architecture config, for the ids the presets name.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "google/gemma-3-270m": GEMMA3_270M,
    "facebook/dinov2-small": DINOV2_SMALL,
    "facebook/dinov2-base": DINOV2_BASE,
    "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T": TINYLLAMA_1B,
    "meta-llama/Llama-2-7b-hf": LLAMA2_7B,
}


def architecture(name: str, layers: int | None = None) -> dict[str, Any]:
    """The config of a base model by its hub id (a copy), optionally cut to ``layers`` layers."""
    from lexsearch.errors import ModelError

    if name not in ARCHITECTURES:
        raise ModelError(f"no shipped architecture for {name!r} (known: {', '.join(ARCHITECTURES)})")
    arch = dict(ARCHITECTURES[name])
    if layers is not None:
        arch["num_hidden_layers"] = int(layers)
        if "layer_types" in arch:  # one attention kind per layer (Gemma 3)
            arch["layer_types"] = list(arch["layer_types"])[: int(layers)]
    return arch


def random_bases(vision_arch: dict, lm_arch: dict, tokenizer, seed: int = 0):
    """(vision, lm): a DINOv2-architecture ViT and a Llama (or Gemma 3) with random weights, built on the
    current default device (``with torch.device("meta"):`` counts parameters without memory).

    The LM's special ids come from ``tokenizer``, whose size must be the architecture's vocabulary.
    """
    import torch
    from transformers import Dinov2Config, Dinov2Model

    from lexsearch.errors import ModelError

    lm_arch = dict(lm_arch)
    vocab = lm_arch.setdefault("vocab_size", len(tokenizer))
    if len(tokenizer) != vocab:
        raise ModelError(
            f"the tokenizer has {len(tokenizer)} pieces but the LM's vocabulary is {vocab}: "
            "use a Llama-2-family tokenizer"
        )
    lm_arch.update(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return Dinov2Model(Dinov2Config(**vision_arch)), causal_lm(lm_arch)


def causal_lm(arch: dict):
    """A causal LM with random weights from an architecture dict: Gemma 3 when its ``model_type`` says
    ``gemma3_text``, else a Llama."""
    arch = dict(arch)
    if arch.pop("model_type", "llama") == "gemma3_text":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        return Gemma3ForCausalLM(Gemma3TextConfig(**arch))
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**arch))


def preset_bases(model_config, tokenizer, layers: int | None = None, seed: int = 0):
    """Random (vision, lm) of the architectures a preset's config names (hub ids), optionally cut to
    ``layers`` layers each."""
    return random_bases(
        architecture(model_config.vision_model, layers),
        architecture(model_config.lm_model, layers),
        tokenizer,
        seed,
    )


def write_random_checkpoint(
    out_dir, model_config, tokenizer, vision_arch: dict, lm_arch: dict, seed: int = 0
):
    """A loadable lexsearch checkpoint in ``out_dir`` with random bases of the given architectures (saved
    under ``base/``) and fresh trainable parts: what `lexsearch index` / `query` / `explain` run on."""
    from dataclasses import replace
    from pathlib import Path

    import torch

    from lexsearch.model.checkpoint import build_model, quiet_transformers, save_checkpoint

    quiet_transformers()
    out_dir = Path(out_dir)
    vision, lm = random_bases(vision_arch, lm_arch, tokenizer, seed)
    vision.save_pretrained(out_dir / "base" / "vision")
    lm.save_pretrained(out_dir / "base" / "lm")
    tokenizer.save_pretrained(out_dir / "base" / "lm")
    del vision, lm
    config = replace(model_config, vision_model="base/vision", lm_model="base/lm", tokenizer="", vocab_ids=[])
    torch.manual_seed(seed)
    model = build_model(config, root=out_dir)
    return save_checkpoint(model, out_dir, root=out_dir)


def load_sentencepiece_tokenizer(model_file: str):
    """A SentencePiece ``.model`` file (Llama 2's, or Mistral's stand-in) through the tokenizer class the
    hub's Llama 2 uses (``LlamaTokenizer``), with Llama's pad convention (none: the unk piece)."""
    import shutil
    import tempfile
    from pathlib import Path

    from transformers import LlamaTokenizer

    from lexsearch.errors import ModelError

    if not Path(model_file).is_file():
        raise ModelError(f"tokenizer file not found: {model_file}")
    # from_pretrained reads a SentencePiece model only under its usual name, in a folder.
    with tempfile.TemporaryDirectory(prefix="lexsearch-spm-") as tmp:
        shutil.copyfile(model_file, Path(tmp) / "tokenizer.model")
        try:
            tok = LlamaTokenizer.from_pretrained(tmp, add_bos_token=True, legacy=False)
        except Exception as exc:  # sentencepiece/protobuf missing, or not a SentencePiece file
            raise ModelError(f"cannot read {model_file} as a SentencePiece model: {exc}") from exc
    if len(tok) < 100:
        raise ModelError(f"{model_file} is not a SentencePiece model (needs the sentencepiece package)")
    if tok.pad_token_id is None:
        tok.pad_token = tok.unk_token
    return tok


def meta_model(model_config, tokenizer, layers: int | None = None):
    """The whole LexVLA of a preset on the meta device (shapes, no memory, no weights): for counting."""
    from dataclasses import replace

    import torch

    from lexsearch.model.lexvla import LexVLA
    from lexsearch.model.vocab import filter_vocabulary

    ids = model_config.vocab_ids or filter_vocabulary(tokenizer, model_config.vocab_filter)
    config = replace(model_config, vocab_ids=list(ids))
    with torch.device("meta"):
        vision, lm = preset_bases(config, tokenizer, layers)
        return LexVLA(config, vision, lm, tokenizer)


def parameter_counts(model) -> dict[str, int]:
    """Parameters by part: adapter, image codebook (Z_img), LoRA, the LM without LoRA, the vision backbone,
    the dense heads, all trainable and all frozen ones."""

    def count(params) -> int:
        return int(sum(p.numel() for p in params))

    named = list(model.named_parameters())
    dense = [m for m in (model.dense_img, model.dense_txt) if m is not None]
    return {
        "adapter": count(model.adapter.parameters()),
        "image_codebook": int(model.z_img.numel()),
        "lora": count(p for n, p in named if "lora_" in n),
        "lm": count(p for n, p in model.lm.named_parameters() if "lora_" not in n),
        "vision": count(model.vision.parameters()),
        "dense_heads": count(p for m in dense for p in m.parameters()),
        "trainable": count(p for _, p in named if p.requires_grad),
        "frozen": count(p for _, p in named if not p.requires_grad),
    }
