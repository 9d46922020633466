"""The tiny preset's base models: built, pretrained once per training set, and cached.

:func:`prepare_tiny_bases` is the single hook the training loop calls for the tiny preset. The ViT is the
shipped one (:mod:`lexsearch.tiny.vit_asset`, pretrained once on a generic corpus, as DINOv2 is downloaded)
when it fits the vision config, else pretrained on the training images (:mod:`lexsearch.tiny.vision`); the tiny
LM is pretrained per training set (:mod:`lexsearch.tiny.lm`; its tokenizer is built from the captions). Both
are cached under ``LEXSEARCH_HOME/cache/tiny-bases/<hash of inputs>/``. Shard streams keep random bases.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import torch

from lexsearch.config import cache_dir
from lexsearch.errors import DataError
from lexsearch.model.config import ModelConfig
from lexsearch.tiny.config import PretrainConfig, Progress
from lexsearch.tiny.lm import pretrain_lm
from lexsearch.tiny.vision import load_vision_targets, pretrain_vision

log = logging.getLogger(__name__)

# Bump when the pretraining procedure changes, so old cache entries are not reused.
PRETRAIN_VERSION = 3  # 2: lowercasing tokenizer, generic stop words, query-like texts; 3: answers in order
MAX_TOKENIZER_CAPTIONS = 200_000  # enough text to train a small BPE vocabulary; shards are not read further


@dataclass
class TinyBases:
    """Where the pretrained bases are, and what pretraining measured (for logs and tests)."""

    root: Path
    vision_dir: Path
    lm_dir: Path
    report: dict
    cached: bool  # True when loaded from the cache without pretraining
    # True when a deadline cut the pretraining short: ``root`` is then a scratch folder outside the cache
    # (the bases of these inputs are not these), which the caller removes once it has copied them.
    scratch: bool = False


def read_captions(data_root: Path) -> list[str]:
    """Captions of a ``--data`` folder (captions.jsonl or captions.csv), in file order."""
    from lexsearch.data.pairs import load_folder

    return list(load_folder(data_root).captions)


def _digest_inputs(
    data_root: Path,
    captions: Sequence[str],
    image_keys: Sequence[str] | None,
    model_config: ModelConfig,
    cfg: PretrainConfig,
    shipped_vit: Path | None = None,
) -> str:
    """Hash of everything the bases depend on: captions, toy labels/masks/images, configs, code version
    (and the shipped ViT's weights when it is used; the training images then no longer matter)."""
    from lexsearch.tiny.vit_asset import asset_digest

    digest = hashlib.sha256()
    payload = {
        "shipped_vit": asset_digest(shipped_vit) if shipped_vit is not None else None,
        "version": PRETRAIN_VERSION,
        "pretrain": asdict(cfg),
        "vision_config": model_config.vision_config,
        "lm_config": model_config.lm_config,
        "prompt": list(model_config.prompt_parts()),
        "max_text_tokens": model_config.max_text_tokens,
        "image": [model_config.image_size, list(model_config.image_mean), list(model_config.image_std)],
    }
    digest.update(json.dumps(payload, sort_keys=True).encode())
    for caption in captions:
        digest.update(caption.encode() + b"\n")
    root = Path(data_root)
    if shipped_vit is None and (root / "labels.jsonl").is_file():
        digest.update((root / "labels.jsonl").read_bytes())
        keys = sorted(image_keys) if image_keys is not None else None
        digest.update(json.dumps(keys).encode())
        # Images and masks are small; hashing them guards against a hand-edited world with stale labels.
        for key in (
            keys
            if keys is not None
            else sorted(str(p.relative_to(root)) for p in (root / "images").iterdir())
        ):
            for path in (root / key, root / "masks" / Path(key).name):
                if path.is_file():
                    digest.update(path.name.encode())
                    digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


def pretrain_tiny_bases(
    data_root: str | Path,
    model_config: ModelConfig,
    cfg: PretrainConfig | None = None,
    *,
    captions: Sequence[str] | None = None,
    image_keys: Sequence[str] | None = None,
    cache_root: Path | None = None,
    progress: Progress | None = None,
    deadline: float | None = None,
) -> TinyBases:
    """Pretrained tiny bases for the ``--data`` folder ``data_root``, from the cache or built now.

    ``deadline`` (``time.monotonic()``) bounds the LM pretraining (see ``pretrain_lm``); bases it cut short
    are returned from a scratch folder and not cached.

    ``captions`` / ``image_keys`` restrict pretraining to the training split (default: the whole folder), so
    held-out images and captions are never seen by the bases.

    ``model_config`` supplies the architectures (``vision_config``, ``lm_config``), the prompt and the image
    preprocessing. The result is deterministic for ``cfg.seed`` and the inputs; a second call with the same
    inputs returns the cached folders at once.
    """

    from lexsearch.model.checkpoint import quiet_transformers
    from lexsearch.tiny.builder import build_tokenizer, random_tiny_bases

    quiet_transformers()
    cfg = cfg or PretrainConfig()
    data_root = Path(data_root)
    captions = list(captions) if captions is not None else read_captions(data_root)
    if not captions:
        raise DataError(f"{data_root}: no captions to pretrain the tiny bases on")
    from lexsearch.tiny.vit_asset import load_shipped_vit, read_record, shipped_vit_dir

    shipped = shipped_vit_dir(model_config) if cfg.use_shipped_vit else None
    key = _digest_inputs(data_root, captions, image_keys, model_config, cfg, shipped)
    root = Path(cache_root or cache_dir() / "tiny-bases") / key
    done = root / "pretrain.json"
    if done.is_file():
        report = json.loads(done.read_text())
        log.info("tiny bases from cache: %s", root)
        return TinyBases(root, root / "vision", root / "lm", report, cached=True)

    t0 = time.perf_counter()
    tmp = root.with_name(f"{root.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        tokenizer = build_tokenizer(captions, vocab_size=cfg.tokenizer_vocab_size)
        vision, lm = random_tiny_bases(
            tokenizer, model_config.vision_config, model_config.lm_config, cfg.seed
        )
        torch.manual_seed(cfg.seed + 1)
        report: dict = {"key": key, "n_captions": len(captions)}
        report.update(pretrain_lm(lm, tokenizer, captions, model_config, cfg, progress, deadline))
        cut_short = report["lm_steps_done"] < cfg.lm_steps
        t_lm = time.perf_counter()
        if shipped is not None:
            # DINOv2's way: a backbone pretrained once on other data, not on this training set.
            vision = load_shipped_vit(shipped)
            report["vit_source"] = "shipped"
            heldout = (read_record(shipped) or {}).get("heldout", {})
            report.update({f"vit_shipped_{k}": v for k, v in heldout.items()})
        else:
            report["vit_source"] = "training set"
            targets = load_vision_targets(
                data_root, model_config, int(vision.config.patch_size), cfg.vit_max_images, image_keys
            )
            if targets is None:
                log.warning("%s has no toy labels (labels.jsonl): the tiny ViT stays random", data_root)
            else:
                torch.manual_seed(cfg.seed + 2)
                report.update(pretrain_vision(vision, targets, cfg, progress))
                report["vit_images"] = int(targets.pixels.shape[0])
        report["seconds_lm"] = round(t_lm - t0, 1)
        report["seconds_total"] = round(time.perf_counter() - t0, 1)
        vision.save_pretrained(tmp / "vision")
        lm.save_pretrained(tmp / "lm")
        tokenizer.save_pretrained(tmp / "lm")
        (tmp / "pretrain.json").write_text(json.dumps(report, indent=1, sort_keys=True))
        if cut_short:
            return TinyBases(tmp, tmp / "vision", tmp / "lm", report, cached=False, scratch=True)
        if root.exists():  # a concurrent run finished first: keep its copy (same inputs, same result)
            shutil.rmtree(tmp)
        else:
            tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TinyBases(root, root / "vision", root / "lm", report, cached=False)


def write_pretrained_bases(
    out_dir: Path,
    data_root: Path,
    captions: Sequence[str],
    image_keys: Sequence[str] | None,
    cfg: PretrainConfig | None = None,
    progress: Progress | None = None,
    deadline: float | None = None,
    **overrides,
) -> None:
    """The tiny preset's pretrained (cached) bases, copied to ``out_dir/base`` (``base/vision``, ``base/lm``
    and ``base/pretrain.json``): what a checkpoint in ``out_dir`` loads. No model is written. ``overrides``
    are ModelConfig fields of the tiny preset."""
    from lexsearch.model.presets import preset_config

    cfg = cfg or PretrainConfig()
    out_dir = Path(out_dir)
    bases = pretrain_tiny_bases(
        data_root,
        preset_config("tiny", **overrides),
        cfg,
        captions=captions,
        image_keys=image_keys,
        progress=progress,
        deadline=deadline,
    )
    try:
        for name, src in (("vision", bases.vision_dir), ("lm", bases.lm_dir)):
            dest = out_dir / "base" / name
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(src, dest)
        (out_dir / "base" / "pretrain.json").write_text(json.dumps(bases.report, indent=1, sort_keys=True))
    finally:
        if bases.scratch:
            shutil.rmtree(bases.root, ignore_errors=True)


def untrained_tiny_model(out_dir: Path, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A fresh ``tiny`` LexVLA (trainable parts at their seeded initial values) on the bases under
    ``out_dir/base``, in memory. ``overrides`` are ModelConfig fields of the tiny preset."""
    from lexsearch.model.checkpoint import build_model
    from lexsearch.model.presets import preset_config

    torch.manual_seed(seed)
    # Initialised in float32 whatever the bases' dtype, so every dtype (and rank) starts from the same values.
    model = build_model(preset_config("tiny", **overrides), root=Path(out_dir))
    if dtype != torch.float32:
        state = model.trainable_state_dict()
        model = build_model(model.config, root=Path(out_dir), dtype=dtype)
        model.load_state_dict(state, strict=False)
    return model


def write_pretrained_checkpoint(
    out_dir: Path,
    data_root: Path,
    captions: Sequence[str],
    image_keys: Sequence[str] | None,
    cfg: PretrainConfig | None = None,
    progress: Progress | None = None,
    **overrides,
) -> Path:
    """An untrained ``tiny`` LexVLA checkpoint in ``out_dir`` on pretrained (cached) bases.

    The bases are copied to ``out_dir/base`` so the checkpoint is self-contained. ``overrides`` are
    ModelConfig fields of the tiny preset.
    """
    from lexsearch.model.checkpoint import save_checkpoint

    cfg = cfg or PretrainConfig()
    write_pretrained_bases(out_dir, data_root, captions, image_keys, cfg, progress, **overrides)
    model = untrained_tiny_model(out_dir, cfg.seed, **overrides)
    return save_checkpoint(model, Path(out_dir), root=Path(out_dir))


def training_captions(pairs) -> list[str]:
    """Captions to build the tiny tokenizer from (all of a folder's; the first ones of a shard stream)."""
    if hasattr(pairs, "captions"):
        return list(pairs.captions)
    return [p.caption for p in islice(iter(pairs), MAX_TOKENIZER_CAPTIONS)]


def prepare_tiny_bases(out_dir: Path, pairs, seed: int = 0, deadline: float | None = None) -> None:
    """Write the base models of a ``tiny`` training run under ``out_dir/base``; no model is written (the
    run's model is :func:`untrained_tiny_model` until its first checkpoint).

    ``pairs`` are the training pairs (images and captions). A folder source gets pretrained bases
    (:mod:`lexsearch.tiny`, cached under LEXSEARCH_HOME; ``deadline`` bounds their pretraining); shard
    streams keep random bases.
    """
    from lexsearch.model.presets import preset_config
    from lexsearch.tiny.builder import build_tiny_bases

    source = Path(getattr(pairs, "source", ""))
    if hasattr(pairs, "images") and source.is_dir():
        cfg = PretrainConfig(seed=seed)
        write_pretrained_bases(
            Path(out_dir), source, list(pairs.captions), list(pairs.images), cfg, deadline=deadline
        )
        return
    config = preset_config("tiny")
    build_tiny_bases(
        Path(out_dir) / "base", training_captions(pairs), config.vision_config, config.lm_config, seed=seed
    )
