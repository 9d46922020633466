"""Pretraining of the ``tiny`` preset's bases: what Llama's and DINOv2's pretraining give the paper for free.

LexVLA's lexical claim rests on two pretrained models: the LM-head rows of Llama *mean* words, and the LM
already answers the in-context prompt with the caption's important words; DINOv2's tokens already separate
colour, shape and object regions. A randomly initialised tiny Llama / ViT has neither, so its words are
arbitrary (the issue 3 prototype). This module gives the tiny bases those two properties, offline, in about
two minutes on a 2-core CPU, and caches the result under ``LEXSEARCH_HOME/cache/tiny-bases/<hash>/``.

LM stand-in (causal LM on text in the prompt's format)
    Each training sequence is exactly what LexVLA feeds its LM at training time -- the prompt prefix (the
    paper's demonstration), the caption, the prompt suffix and ``prompt_end`` -- followed by the caption's
    important words in the demonstration's format (``red", "circle", "blue", "star".``). The ids are built by
    concatenating the three separately tokenised parts, as :meth:`LexVLA.tokenize` does, so the read-out
    position sees the same tokens as in training. The important words are *shuffled* in every sequence: the
    next-token distribution after the prompt is then spread over all the caption's content words rather than
    only the first one, which is what a lexical read-out needs. Important words are the caption's words
    minus a small stop list [choice]: the paper relies on Llama already knowing what matters.

ViT stand-in (supervised dense + image-level heads on the toy labels) [choice]
    DINOv2's patch features are known to segment objects linearly and its CLS token to classify them; that is
    what PatchDis and the explanation metric exploit. The fastest way to give a 4-layer ViT the same on two
    CPU cores is supervision from the toy world's ground truth: a linear head on every patch token predicts
    the shape and the colour under that patch (background included), and a linear head on CLS predicts which
    colours and shapes the image contains (multi-label). Self-supervised objectives (DINO, MAE) need far more
    steps than the budget allows to see shape at all. The heads are thrown away; only the backbone is kept
    (and frozen by LexVLA training), so the words still have to be learnt by LexVLA from captions alone.
    Data without toy labels (no ``labels.jsonl``) keeps a random backbone, with a warning. This per-run
    pretraining is the fallback: when the shipped ViT (:mod:`lexsearch.train.tiny_vit`, the same recipe run
    once for far longer on a generic toy corpus) fits the vision config, it is loaded instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lexsearch.config import cache_dir
from lexsearch.errors import DataError
from lexsearch.model.config import ModelConfig

log = logging.getLogger(__name__)

# Bump when the pretraining procedure changes, so old cache entries are not reused.
PRETRAIN_VERSION = 1

# Words that are never "important" [choice]: articles, conjunctions and the toy templates' function words.
DEFAULT_STOP_WORDS: tuple[str, ...] = (
    "a",
    "an",
    "and",
    "the",
    "of",
    "is",
    "are",
    "there",
    "with",
    "in",
    "on",
    "at",
    "to",
    "it",
    "this",
    "that",
    "picture",
    "image",
    "photo",
    "some",
    "its",
    "by",
    "for",
    "as",
    "or",
    "from",
)

Progress = Callable[[str, int, int, dict], None]  # (stage, step, total, metrics) -> None


@dataclass
class PretrainConfig:
    """How the tiny bases are pretrained. Every field is part of the cache key."""

    seed: int = 0
    tokenizer_vocab_size: int = 2000
    # --- LM: ~300 steps of 32 prompt-format sequences take ~1 min on 2 CPU cores ---
    # A 2-layer LM learns to *copy* the caption's words into the answer only after several hundred steps
    # (before that it predicts every colour/shape word alike): 800 steps, a high LR and answer-weighted loss.
    lm_steps: int = 600
    lm_batch_size: int = 32
    lm_lr: float = 5e-3
    lm_answer_weight: float = 50.0  # loss weight of the quoted-words answer relative to the caption tokens
    # Weight of a sigmoid loss at the read-out position (caption's words up, every other piece down) [choice]:
    # CE alone leaves all eleven toy content words at similar logits, and elu1p(logits) is then flat. At 10
    # the caption's words were the top-|words| of the read-out for only 14% of held-out toy captions (the
    # other shape/colour words sat just below), at 100 for 100%, same steps (issue 3, 2,000-image world).
    lm_readout_weight: float = 100.0
    stop_words: tuple[str, ...] = DEFAULT_STOP_WORDS
    # --- ViT: a few epochs over the training images ---
    vit_epochs: int = 15
    vit_batch_size: int = 64
    vit_lr: float = 2e-3
    vit_max_images: int = 4000  # cap, so a large --data folder does not blow the time budget
    # Load the shipped ViT (lexsearch/model/assets/tiny_vit, pretrained once on a generic toy corpus) when it
    # matches the vision config, instead of pretraining one on the training set; see lexsearch.train.tiny_vit.
    use_shipped_vit: bool = True

    def __post_init__(self) -> None:
        self.stop_words = tuple(self.stop_words)


@dataclass
class TinyBases:
    """Where the pretrained bases are, and what pretraining measured (for logs and tests)."""

    root: Path
    vision_dir: Path
    lm_dir: Path
    report: dict
    cached: bool  # True when loaded from the cache without pretraining


# --------------------------------------------------------------------------------------------- text side


_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


def important_words(caption: str, stop_words: Sequence[str] = DEFAULT_STOP_WORDS) -> list[str]:
    """The caption's content words, lowercased, in order of first appearance, without stop words."""
    stop = set(stop_words)
    seen: dict[str, None] = {}
    for word in _WORD.findall(caption.lower()):
        if word not in stop:
            seen.setdefault(word, None)
    return list(seen)


def _piece(tokenizer, piece: str, fallback: str) -> list[int]:
    """Id of one vocabulary piece, or the tokenisation of ``fallback`` when the tokenizer lacks it."""
    tid = tokenizer.convert_tokens_to_ids(piece)
    if tid is not None and tid != tokenizer.unk_token_id:
        return [int(tid)]
    return list(tokenizer(fallback, add_special_tokens=False)["input_ids"])


class PromptFormat:
    """Builds token ids of prompt-format training sequences exactly as :class:`LexVLA` tokenises prompts."""

    def __init__(self, tokenizer, config: ModelConfig, max_text_tokens: int | None = None) -> None:
        self.tokenizer = tokenizer
        prefix, suffix = config.prompt_parts()
        self.prefix = list(tokenizer(prefix, add_special_tokens=True)["input_ids"])
        self.suffix = list(tokenizer(suffix, add_special_tokens=False)["input_ids"])
        self.max_text_tokens = max_text_tokens or config.max_text_tokens
        # The answer format of the paper's demonstration: "man", "riding", "white", "horse".
        self.open_quote = [] if suffix.endswith('"') else _piece(tokenizer, '"', '"')
        self.separator = _piece(tokenizer, '",', '",') + _piece(tokenizer, '\u2581"', ' "')
        self.close = _piece(tokenizer, '".', '".')
        self._word_cache: dict[str, list[int]] = {}

    def word_ids(self, word: str) -> list[int]:
        if word not in self._word_cache:
            # Tokenised alone, as a caption's words are (word-initial pieces, "▁red").
            self._word_cache[word] = list(self.tokenizer(word, add_special_tokens=False)["input_ids"])
        return self._word_cache[word]

    def query_ids(self, caption: str) -> list[int]:
        """prefix + caption + suffix: the ids whose last position LexVLA reads out."""
        body = list(self.tokenizer(caption, add_special_tokens=False)["input_ids"])[: self.max_text_tokens]
        return self.prefix + body + self.suffix

    def sequence(self, caption: str, words: Sequence[str]) -> tuple[list[int], int]:
        """(ids, n_query): the query ids followed by the quoted words, and where the answer starts."""
        query = self.query_ids(caption)
        answer = list(self.open_quote)
        for i, word in enumerate(words):
            if i:
                answer += self.separator
            answer += self.word_ids(word)
        answer += self.close + [self.tokenizer.eos_token_id]
        return query + answer, len(query)


def _lm_batch(fmt: PromptFormat, captions: Sequence[str], stop_words, rng: np.random.Generator, pad_id: int):
    """Body ids after the shared prefix (B, L), attention mask (B, L), answer positions (B, L) bool and the
    read-out targets (position (B,), multi-hot of the important words' first pieces (B, V_full)).

    A token's weight is 1, or ``answer_weight`` (applied by the caller) where it belongs to the answer: the
    caption tokens are unpredictable by construction and would otherwise dominate the gradient.
    """
    rows, starts = [], []
    n_prefix = len(fmt.prefix)
    for caption in captions:
        words = important_words(caption, stop_words)
        order = rng.permutation(len(words))  # shuffled: the read-out must cover every content word
        ids, n_query = fmt.sequence(caption, [words[i] for i in order])
        rows.append(ids[n_prefix:])
        starts.append(n_query - n_prefix)
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    answer = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        answer[i, starts[i] : len(row)] = True
    readout_pos = torch.tensor(starts, dtype=torch.long) - 1  # the query's last token
    multi_hot = torch.zeros((len(rows), len(fmt.tokenizer)), dtype=torch.float32)
    for i, caption in enumerate(captions):
        for word in important_words(caption, stop_words):
            multi_hot[i, fmt.word_ids(word)[0]] = 1.0
    return ids, mask, answer, (readout_pos, multi_hot)


def _prefix_cache(lm, prefix: torch.Tensor, batch: int):
    """Key/value cache of the shared prompt prefix, repeated for the batch (no gradient through it)."""
    from transformers import DynamicCache

    decoder = lm.get_decoder()
    cache = DynamicCache(config=decoder.config)
    with torch.no_grad():
        decoder(input_ids=prefix[None], cache=cache, use_cache=True)
    cache.batch_repeat_interleave(batch)
    return cache


def lm_step_loss(
    lm,
    fmt: PromptFormat,
    ids: torch.Tensor,
    mask: torch.Tensor,
    answer: torch.Tensor,
    answer_weight: float,
    readout: tuple[torch.Tensor, torch.Tensor] | None = None,
    readout_weight: float = 0.0,
) -> torch.Tensor:
    """Causal-LM loss of the body tokens given the shared prefix (run once, as LexVLA does at training).

    ``readout`` = (position of the read-out token in each row (B,), multi-hot targets (B, V_full)) adds a
    sigmoid loss there, weighted by ``readout_weight``.
    """
    bsz, length = ids.shape
    prefix = torch.tensor(fmt.prefix, dtype=torch.long)
    n_prefix = prefix.shape[0]
    cache = _prefix_cache(lm, prefix, bsz)
    positions = torch.arange(n_prefix, n_prefix + length)[None].expand(bsz, -1)
    full_mask = torch.cat([mask.new_ones(bsz, n_prefix), mask], dim=1)
    logits = lm(
        input_ids=ids, attention_mask=full_mask, position_ids=positions, cache=cache, use_cache=True
    ).logits  # (B, L, V_full)
    # Position t predicts token t + 1; the first body token is predicted from the prefix's last position,
    # whose logits are constant here (no gradient), so it is skipped.
    readout_loss = logits.new_zeros(())
    if readout is not None and readout_weight > 0:
        # The read-out position (the prompt's last token) as a multi-label word classifier: LexVLA reads
        # elu1p(logits), not a softmax, so the *level* of a logit matters, not only its rank among others.
        last = logits[torch.arange(bsz), readout[0]]  # (B, V_full)
        readout_loss = F.binary_cross_entropy_with_logits(last.float(), readout[1])
    logits, targets = logits[:, :-1], ids[:, 1:]
    valid = mask[:, 1:].bool()
    weights = torch.where(answer[:, 1:], answer_weight, 1.0) * valid
    nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none").view_as(weights)
    return (nll * weights).sum() / weights.sum() + readout_weight * readout_loss


@torch.no_grad()
def content_hit_rate(
    lm, fmt: PromptFormat, captions: Sequence[str], stop_words=DEFAULT_STOP_WORDS, batch_size: int = 64
) -> float:
    """Share of captions whose next-token argmax after the prompt is one of the caption's important words.

    The cheap check that the LM answers the prompt lexically (a random LM scores ~0).
    """
    lm.eval()
    hits = 0
    pad = fmt.tokenizer.pad_token_id or 0
    for start in range(0, len(captions), batch_size):
        chunk = list(captions[start : start + batch_size])
        rows = [fmt.query_ids(c) for c in chunk]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        logits = lm(input_ids=ids, attention_mask=mask).logits  # (B, L, V_full)
        last = logits[torch.arange(len(rows)), mask.sum(1) - 1]  # (B, V_full)
        pred = last.argmax(-1).tolist()
        for caption, p in zip(chunk, pred):
            targets = {fmt.word_ids(w)[0] for w in important_words(caption, stop_words)}
            hits += int(p in targets)
    return hits / max(1, len(captions))


def pretrain_lm(
    lm,
    tokenizer,
    captions: Sequence[str],
    model_config: ModelConfig,
    cfg: PretrainConfig,
    progress: Progress | None = None,
) -> dict:
    """Train ``lm`` in place as a causal LM on prompt-format sequences of ``captions``; returns figures."""
    fmt = PromptFormat(tokenizer, model_config)
    rng = np.random.default_rng(cfg.seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    probe = list(captions[: min(256, len(captions))])
    before = content_hit_rate(lm, fmt, probe, cfg.stop_words)
    opt = torch.optim.AdamW(lm.parameters(), lr=cfg.lm_lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, cfg.lm_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _warmup_cosine(s, warmup, cfg.lm_steps))
    lm.train()
    loss_value = float("nan")
    for step in range(cfg.lm_steps):
        pick = rng.integers(0, len(captions), size=cfg.lm_batch_size)
        ids, mask, answer, readout = _lm_batch(fmt, [captions[i] for i in pick], cfg.stop_words, rng, pad_id)
        loss = lm_step_loss(lm, fmt, ids, mask, answer, cfg.lm_answer_weight, readout, cfg.lm_readout_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_value = float(loss.detach())
        if progress is not None:
            progress("lm", step + 1, cfg.lm_steps, {"loss": loss_value})
    lm.eval()
    after = content_hit_rate(lm, fmt, probe, cfg.stop_words)
    log.info("tiny LM pretraining: loss %.3f, content-word read-out %.2f -> %.2f", loss_value, before, after)
    return {"lm_loss": loss_value, "lm_content_hit_before": before, "lm_content_hit_after": after}


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


# -------------------------------------------------------------------------------------------- image side


@dataclass
class VisionTargets:
    """Supervision for the ViT stand-in: per-patch shape/colour classes and image-level presence."""

    pixels: torch.Tensor  # (N, 3, S, S) normalised
    patch_shape: torch.Tensor  # (N, P) long, 0 = background, k = shapes[k - 1]
    patch_colour: torch.Tensor  # (N, P) long, 0 = background, k = colours[k - 1]
    present: torch.Tensor  # (N, n_shapes + n_colours) float 0/1
    shapes: list[str]
    colours: list[str]


def patch_targets(
    mask: np.ndarray,
    image_shapes: Sequence[tuple[str, str]],
    shapes: Sequence[str],
    colours: Sequence[str],
    patch_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-patch shape ids, per-patch colour ids (0 = background) and the image's multi-hot presence row.

    ``mask`` (S, S) holds shape category ids (index in ``shapes`` + 1); ``image_shapes`` are the image's
    (colour, shape) pairs (each shape at most once per image, as the toy world draws them).
    """
    grid = mask.shape[0] // patch_size
    colour_of = np.zeros(len(shapes) + 1, dtype=np.int64)
    for colour, shape in image_shapes:
        colour_of[shapes.index(shape) + 1] = colours.index(colour) + 1
    # Majority class of each patch's pixels (background wins ties only when it is the majority).
    cells = mask.reshape(grid, patch_size, grid, patch_size).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
    counts = np.stack([(cells == c).sum(1) for c in range(len(shapes) + 1)], axis=1)  # (P, C+1)
    shape_ids = counts.argmax(1)
    row = np.zeros(len(shapes) + len(colours), dtype=np.float32)
    for colour, shape in image_shapes:
        row[shapes.index(shape)] = 1.0
        row[len(shapes) + colours.index(colour)] = 1.0
    return shape_ids, colour_of[shape_ids], row


def load_vision_targets(
    data_root: Path,
    model_config: ModelConfig,
    patch_size: int,
    max_images: int,
    image_keys: Sequence[str] | None = None,
) -> VisionTargets | None:
    """Read a toy world's images, masks and labels (only ``image_keys`` when given, so held-out images stay
    unseen); None when the folder has no toy labels."""
    from PIL import Image

    from lexsearch.model.images import open_image, preprocess
    from lexsearch.train.toyworld import read_labels

    data_root = Path(data_root)
    if not (data_root / "labels.jsonl").is_file():
        return None
    labels = read_labels(data_root)
    meta_path = data_root / "toyworld.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        shapes, colours = list(meta["shape_categories"]), list(meta["colour_categories"])
    else:
        shapes = sorted({s.shape for lab in labels.values() for s in lab.shapes})
        colours = sorted({s.colour for lab in labels.values() for s in lab.shapes})
    keys = [k for k in (image_keys if image_keys is not None else sorted(labels)) if k in labels][:max_images]
    if not keys:
        return None
    size = model_config.image_size
    pixels, patch_shape, patch_colour, present = [], [], [], []
    for key in keys:
        lab = labels[key]
        pixels.append(
            preprocess(open_image(data_root / key), size, model_config.image_mean, model_config.image_std)
        )
        mask_path = data_root / "masks" / Path(key).name
        if not mask_path.is_file():
            raise DataError(f"{mask_path}: toy mask missing (regenerate the toy world)")
        with Image.open(mask_path) as im:
            # Nearest resize keeps class ids; the mask holds shape category ids (index in shapes + 1).
            mask = np.asarray(im.convert("L").resize((size, size), Image.Resampling.NEAREST), dtype=np.int64)
        row = patch_targets(mask, [(s.colour, s.shape) for s in lab.shapes], shapes, colours, patch_size)
        patch_shape.append(row[0])
        patch_colour.append(row[1])
        present.append(row[2])
    return VisionTargets(
        pixels=torch.from_numpy(np.stack(pixels)),
        patch_shape=torch.from_numpy(np.stack(patch_shape)),
        patch_colour=torch.from_numpy(np.stack(patch_colour)),
        present=torch.from_numpy(np.stack(present)),
        shapes=shapes,
        colours=colours,
    )


class _VisionHeads(nn.Module):
    """Throw-away linear probes that carry the supervision into the backbone."""

    def __init__(self, width: int, n_shapes: int, n_colours: int) -> None:
        super().__init__()
        self.patch_shape = nn.Linear(width, n_shapes + 1)
        self.patch_colour = nn.Linear(width, n_colours + 1)
        self.present = nn.Linear(width, n_shapes + n_colours)


def pretrain_vision(
    vision,
    targets: VisionTargets,
    cfg: PretrainConfig,
    progress: Progress | None = None,
    eval_targets: VisionTargets | None = None,
    steps: int | None = None,
) -> dict:
    """Train the ViT ``vision`` in place on the dense + image-level toy supervision; returns accuracies
    (the last batch's, and on ``eval_targets`` when given).

    ``steps`` overrides ``cfg.vit_epochs`` (epochs over ``targets``) as the length of the run; the
    learning rate, batch size and seed always come from ``cfg``.
    """
    width = int(vision.config.hidden_size)
    prefix = 1 + int(getattr(vision.config, "num_register_tokens", 0) or 0)
    heads = _VisionHeads(width, len(targets.shapes), len(targets.colours))
    params = list(vision.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.vit_lr, weight_decay=0.05)
    n = targets.pixels.shape[0]
    steps_per_epoch = max(1, math.ceil(n / cfg.vit_batch_size))
    total = steps if steps is not None else cfg.vit_epochs * steps_per_epoch
    warmup = max(1, min(total // 20, 500))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _warmup_cosine(s, warmup, total))
    gen = torch.Generator().manual_seed(cfg.seed)
    vision.train()
    step, metrics = 0, {}
    while step < total:
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.vit_batch_size):
            if step >= total:
                break
            idx = order[start : start + cfg.vit_batch_size]
            x = targets.pixels[idx]
            if torch.rand((), generator=gen) < 0.5:  # horizontal flip: every toy shape is mirror-symmetric
                x = x.flip(-1)
                flip = True
            else:
                flip = False
            tokens = vision(pixel_values=x).last_hidden_state  # (B, T, Hv)
            patches, cls = tokens[:, prefix:], tokens[:, 0]
            ps, pc = targets.patch_shape[idx], targets.patch_colour[idx]
            if flip:
                g = math.isqrt(ps.shape[1])
                ps = ps.view(-1, g, g).flip(-1).reshape(ps.shape)
                pc = pc.view(-1, g, g).flip(-1).reshape(pc.shape)
            shape_logits = heads.patch_shape(patches)
            colour_logits = heads.patch_colour(patches)
            # Shape is learnt on foreground patches only: background is ~85% of the patches and is already
            # told apart by the colour head, so an all-patch loss spends its gradient on the easy part.
            fg_mask = ps > 0
            loss_shape = (
                F.cross_entropy(shape_logits[fg_mask], ps[fg_mask])
                if fg_mask.any()
                else shape_logits.sum() * 0
            )
            loss_colour = F.cross_entropy(colour_logits.flatten(0, 1), pc.flatten())
            loss_present = F.binary_cross_entropy_with_logits(heads.present(cls), targets.present[idx])
            loss = loss_shape + loss_colour + loss_present
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            with torch.no_grad():
                fg = ps > 0
                metrics = {
                    "loss": float(loss.detach()),
                    # Shape accuracy on foreground patches: the part that needs more than colour.
                    "shape_acc": float((shape_logits.argmax(-1)[fg] == ps[fg]).float().mean())
                    if fg.any()
                    else 0.0,
                    "colour_acc": float((colour_logits.argmax(-1) == pc).float().mean()),
                }
            if progress is not None:
                progress("vit", step, total, metrics)
    vision.eval()
    if eval_targets is not None:
        metrics.update(_vision_eval(vision, heads, eval_targets, prefix))
    log.info("tiny ViT pretraining: %s", ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return {f"vit_{k}": v for k, v in metrics.items()}


@torch.no_grad()
def _vision_eval(vision, heads: _VisionHeads, targets: VisionTargets, prefix: int) -> dict:
    """Held-out accuracies of the probes: foreground patch shape / colour, and image-level presence."""
    shape_hits = colour_hits = fg_total = present_hits = 0
    for start in range(0, targets.pixels.shape[0], 128):
        sl = slice(start, start + 128)
        tokens = vision(pixel_values=targets.pixels[sl]).last_hidden_state
        ps, pc = targets.patch_shape[sl], targets.patch_colour[sl]
        fg = ps > 0
        shape_hits += int((heads.patch_shape(tokens[:, prefix:]).argmax(-1)[fg] == ps[fg]).sum())
        colour_hits += int((heads.patch_colour(tokens[:, prefix:]).argmax(-1)[fg] == pc[fg]).sum())
        fg_total += int(fg.sum())
        pred = heads.present(tokens[:, 0]) > 0
        present_hits += int((pred == targets.present[sl].bool()).all(1).sum())
    return {
        "eval_shape_acc": shape_hits / max(1, fg_total),
        "eval_colour_acc": colour_hits / max(1, fg_total),
        "eval_present_exact": present_hits / max(1, targets.pixels.shape[0]),
    }


# --------------------------------------------------------------------------------------------- caching


def read_captions(data_root: Path) -> list[str]:
    """Captions of a ``--data`` folder (captions.jsonl or captions.csv), in file order."""
    from lexsearch.train.data import load_folder

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
    from lexsearch.train.tiny_vit import asset_digest

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
) -> TinyBases:
    """Pretrained tiny bases for the ``--data`` folder ``data_root``, from the cache or built now.

    ``captions`` / ``image_keys`` restrict pretraining to the training split (default: the whole folder), so
    held-out images and captions are never seen by the bases.

    ``model_config`` supplies the architectures (``vision_config``, ``lm_config``), the prompt and the image
    preprocessing. The result is deterministic for ``cfg.seed`` and the inputs; a second call with the same
    inputs returns the cached folders at once.
    """

    from lexsearch.model.checkpoint import quiet_transformers
    from lexsearch.model.tiny import build_tokenizer, random_tiny_bases

    quiet_transformers()
    cfg = cfg or PretrainConfig()
    data_root = Path(data_root)
    captions = list(captions) if captions is not None else read_captions(data_root)
    if not captions:
        raise DataError(f"{data_root}: no captions to pretrain the tiny bases on")
    from lexsearch.train.tiny_vit import load_shipped_vit, read_record, shipped_vit_dir

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
        vision, lm = random_tiny_bases(tokenizer, model_config.vision_config, model_config.lm_config, cfg.seed)
        torch.manual_seed(cfg.seed + 1)
        report: dict = {"key": key, "n_captions": len(captions)}
        report.update(pretrain_lm(lm, tokenizer, captions, model_config, cfg, progress))
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
        if root.exists():  # a concurrent run finished first: keep its copy (same inputs, same result)
            shutil.rmtree(tmp)
        else:
            tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TinyBases(root, root / "vision", root / "lm", report, cached=False)


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
    from lexsearch.model.checkpoint import build_model, save_checkpoint
    from lexsearch.model.presets import preset_config

    cfg = cfg or PretrainConfig()
    out_dir = Path(out_dir)
    config = preset_config("tiny", **overrides)
    bases = pretrain_tiny_bases(
        data_root, config, cfg, captions=captions, image_keys=image_keys, progress=progress
    )
    for name, src in (("vision", bases.vision_dir), ("lm", bases.lm_dir)):
        dest = out_dir / "base" / name
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(src, dest)
    (out_dir / "base" / "pretrain.json").write_text(json.dumps(bases.report, indent=1, sort_keys=True))
    torch.manual_seed(cfg.seed)
    model = build_model(config, root=out_dir)
    return save_checkpoint(model, out_dir, root=out_dir)
