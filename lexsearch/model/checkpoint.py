"""Build a LexVLA model from a config, and save / load checkpoints.

A checkpoint is a folder:

    config.json           the ModelConfig (base model ids or paths, kept vocabulary ids, sparsification, dims)
    lexvla.safetensors    only the trainable weights (adapter, Z_img, LoRA, temperature, dense heads)
    base/vision, base/lm  local base models, when the config names local folders (tiny presets); hub ids
                          (facebook/dinov2-base, meta-llama/Llama-2-7b-hf) are loaded with from_pretrained

Nothing is unpickled: weights are safetensors, everything else JSON. Loading refuses, with a clear message,
a checkpoint whose vocabulary or dimensions do not match the base models it names.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from lexsearch.config import to_dict
from lexsearch.errors import ModelError
from lexsearch.model.config import (
    CONFIG_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    ModelConfig,
    lm_source,
    read_config,
    resolve_base,
    tokenizer_source,
)
from lexsearch.model.lexvla import LexVLA
from lexsearch.model.quiet import quiet_transformers  # noqa: F401  (re-exported: loaders import it from here)
from lexsearch.model.vocab import filter_vocabulary

log = logging.getLogger(__name__)


def _vision_class(vision_type: str):
    """The transformers class of a backbone, imported alone: importing every vision model costs seconds
    at each cold query."""
    if vision_type == "dinov2":
        from transformers.models.dinov2 import Dinov2Model

        return Dinov2Model
    if vision_type == "clip":
        from transformers.models.clip import CLIPVisionModel

        return CLIPVisionModel
    raise ModelError(f"unknown vision_type {vision_type!r} (use dinov2 or clip)")


def load_bases(config: ModelConfig, root: Path | None = None, dtype: torch.dtype = torch.float32):
    """(vision, lm, tokenizer) named by the config, through transformers' ``from_pretrained``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    vision_cls = _vision_class(config.vision_type)
    vision_name = resolve_base(config.vision_model, root)
    lm_name = lm_source(config, root)  # a .gguf base: its converted folder
    tok_name = tokenizer_source(config, root)
    try:
        vision = vision_cls.from_pretrained(vision_name, dtype=dtype)
        lm = AutoModelForCausalLM.from_pretrained(lm_name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(tok_name)
    except OSError as exc:
        raise ModelError(
            f"cannot load the base models ({vision_name}, {lm_name}): {str(exc).splitlines()[0]}"
        ) from exc
    if tokenizer.pad_token_id is None:  # Llama ships without a pad token; any id works under the mask
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return vision, lm, tokenizer


def build_model(config: ModelConfig, root: Path | None = None, dtype: torch.dtype = torch.float32) -> LexVLA:
    """A fresh LexVLA (trainable parts at their initial values) on the config's bases.

    An empty ``config.vocab_ids`` is filled by the vocabulary filter.
    """
    vision, lm, tokenizer = load_bases(config, root, dtype)
    if not config.vocab_ids:
        config.vocab_ids = filter_vocabulary(tokenizer, config.vocab_filter)
        log.info(
            "vocabulary: %d of %d tokenizer pieces kept (rule %s)",
            len(config.vocab_ids),
            len(tokenizer),
            config.vocab_filter,
        )
    elif max(config.vocab_ids) >= len(tokenizer):
        raise ModelError(
            f"the checkpoint's vocabulary (max id {max(config.vocab_ids)}) does not fit the tokenizer of "
            f"{config.lm_model} ({len(tokenizer)} pieces): wrong base model?"
        )
    if vision.config.hidden_size % config.adapter_heads:
        raise ModelError(f"adapter_heads={config.adapter_heads} does not divide the backbone width")
    return LexVLA(config, vision, lm, tokenizer)


def save_checkpoint(model: LexVLA, out_dir: Path, root: Path | None = None) -> Path:
    """Write config.json + lexvla.safetensors (trainable weights only) to ``out_dir``.

    Base models that are local folders (``root``-relative or absolute) are copied into ``out_dir/base`` so the
    checkpoint is self-contained; hub ids stay ids.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = ModelConfig(**to_dict(model.config))
    for field, sub in (("vision_model", "vision"), ("lm_model", "lm"), ("tokenizer", "tokenizer")):
        name = getattr(config, field)
        if not name:
            continue
        src = Path(resolve_base(name, root))
        if src.is_dir():
            dest = out_dir / "base" / sub
            # Frozen bases do not change between saves: copy them once, not at every checkpoint of a run
            # (a 7B LM is 13 GB).
            if src.resolve() != dest.resolve() and not _same_tree(src, dest):
                if dest.exists():
                    shutil.rmtree(dest)
                shutil.copytree(src, dest)
            setattr(config, field, f"base/{sub}")
    state = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.trainable_state_dict().items()
    }
    tmp = out_dir / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": "lexsearch", "version": str(FORMAT_VERSION)})
    tmp.replace(out_dir / WEIGHTS_FILE)
    # V stated on its own (the model's vocab_ids hold the kept ids): what a reader checks first.
    payload = {"format_version": FORMAT_VERSION, "vocab_size": config.vocab_size, "model": to_dict(config)}
    # Last, and atomically: a folder is a model once config.json is there (read_config), so a save cut
    # short (a kill, a full disk) never leaves one that loads with missing or torn parts.
    tmp = out_dir / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(out_dir / CONFIG_FILE)
    return out_dir


def _same_tree(src: Path, dest: Path) -> bool:
    """True when ``dest`` holds the files of ``src`` with their sizes (a copy made by an earlier save)."""
    if not dest.is_dir():
        return False

    def listing(root: Path) -> dict[str, int]:
        return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}

    return listing(src) == listing(dest)


def load_checkpoint(model_dir: Path, dtype: torch.dtype = torch.float32) -> LexVLA:
    """Rebuild the model from its bases and load the trained weights, refusing mismatches."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    config = read_config(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"{model_dir} has no {WEIGHTS_FILE}")
    model = build_model(config, root=model_dir, dtype=dtype)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"cannot read {weights}: {exc}") from exc
    expected = model.trainable_state_dict()
    z_img = state.get("z_img")
    if z_img is not None and model.image_cols.numel() and z_img.shape[0] == model.vocab_size:
        state["z_img"] = z_img[model.image_cols.cpu()]  # written before Z_img kept only the read-out's rows
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelError(
            f"{weights} does not match the model its config describes "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}): was it saved by another version?"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ModelError(
                f"{weights}: {name} has shape {tuple(tensor.shape)} but the model needs "
                f"{tuple(expected[name].shape)} (vocabulary or dimensions differ from the base models)"
            )
    model.load_state_dict(state, strict=False)
    return model
