"""Training with a frozen text tower: each distinct caption runs through the LM once, ever.

With the LM frozen (no LoRA update), a caption's final LM state never changes, so what trains (adapter, Z_img,
temperature, dense image head, and the text head on the LM's state, ``ModelConfig.text_head_rank``) can train
against states computed once. What is cached on disk is the LM's final hidden state h (H floats) of each
caption's prompt, and of the empty text's prompt (the calibration row), under
``LEXSEARCH_HOME/cache/text/<key>/``, key = hash of (base LM, prompt, calibration, text cut); entries are
keyed by the caption itself. The vector follows from h exactly as :meth:`LexVLA.encode_text` computes it.

The image read-out is what costs on a CPU: 145 tokens x H x V per image (V = 87,784 for Gemma 3: ~8 GFLOP).
Training restricts it to the columns the captions' vectors activate: the union of each caption's ``top_k``
strongest words. Scores are sums over words both sides hold, so on those columns the training loss is the
full model's loss with the image vector zero elsewhere; the model records the columns
(``ModelConfig.image_columns``) and inference reads images and texts out on them only too (same vectors as
in training, ~V/|columns| times cheaper; Z_img keeps only their rows). What it changes: an image can light up
only words some training caption's vector held among its top ones; a query's words outside them score nothing
and are left out of its vector (normalised on the columns), and the LM carries a query in other words or
another language onto them (a "crimson disc" reads out as red and circle).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def cache_dir(model) -> Path:
    """The cache folder of ``model``'s text tower: base, prompt, calibration and text cut."""
    from lexsearch.config import home

    cfg = model.config
    key = json.dumps(
        {
            "v": CACHE_VERSION,
            "lm": str(cfg.lm_model),
            "prompt": cfg.prompt,
            "prompt_end": cfg.prompt_end,
            "calibration": cfg.text_calibration,
            "max_text_tokens": cfg.max_text_tokens,
        },
        sort_keys=True,
    )
    return home() / "cache" / "text" / hashlib.sha256(key.encode()).hexdigest()[:24]


def _caption_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    rows: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        try:
            part = load_file(path)
        except Exception:  # a torn file from an interrupted write: its captions are computed again
            log.warning("ignoring unreadable text cache file %s", path)
            continue
        for name, row in part.items():
            rows[name] = row
    return rows


def _write(folder: Path, rows: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256("".join(sorted(rows)).encode()).hexdigest()[:16]
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    save_file({k: v.contiguous() for k, v in rows.items()}, str(tmp))
    os.replace(tmp, folder / f"{name}.safetensors")


@torch.no_grad()
def caption_hidden(model, captions: list[str], batch_size: int = 32, progress=None):
    """(hidden (N, H) of ``captions`` in order, hidden (H,) of the empty text, number computed now), through
    the disk cache: only captions it lacks run through the LM (in training mode's LoRA-free weights)."""
    folder = cache_dir(model)
    cached = _read(folder) if folder.is_dir() else {}
    wanted = {_caption_key(c): c for c in [*captions, ""]}
    missing = [k for k in wanted if k not in cached]
    was_training = model.training
    model.eval()
    try:
        new: dict[str, torch.Tensor] = {}
        device = model.z_txt.device
        for a in range(0, len(missing), batch_size):
            keys = missing[a : a + batch_size]
            ids, mask = model.tokenize([wanted[k] for k in keys])
            h = model.text_hidden(ids.to(device), mask.to(device)).float().cpu()
            new.update(zip(keys, h))
            if progress is not None:
                progress(min(a + batch_size, len(missing)), len(missing))
            if len(new) >= 512:  # written as it goes: an interrupted run keeps what it computed
                _write(folder, new)
                cached.update(new)
                new = {}
        if new:
            _write(folder, new)
            cached.update(new)
    finally:
        model.train(was_training)
    hidden = torch.stack([cached[_caption_key(c)] for c in captions])
    return hidden, cached[_caption_key("")], len(missing)


def word_start_columns(model) -> torch.Tensor | None:
    """A boolean mask (V,) of the columns that start a word (``red``, not the ``##red`` inside "infrared"), or
    None for a tokenizer without word-start markers."""
    from lexsearch.model.vocab import CONTINUATION_MARK, Vocabulary

    backend = getattr(model.tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    words = Vocabulary(backend, model.config.vocab_ids).words
    starts = torch.tensor([not w.startswith(CONTINUATION_MARK) for w in words])
    return starts if not bool(starts.all()) else None


def word_columns(model, words) -> set[int]:
    """The columns of the content words among ``words`` (all their pieces): function words (``a``, ``with``)
    and the columns the model masks are left out."""
    from lexsearch.model.vocab import Vocabulary
    from lexsearch.search.parse import FUNCTION_WORDS

    backend = getattr(model.tokenizer, "backend_tokenizer", None)
    content = [w for w in words if w.lower() not in FUNCTION_WORDS]
    if backend is None or not content:
        return set()
    keep = model.keep.cpu()
    return {c for c in Vocabulary(backend, model.config.vocab_ids).columns(content) if keep[c] > 0}


@torch.no_grad()
def _share(model, hidden: torch.Tensor, empty: torch.Tensor, columns: torch.Tensor, chunk: int) -> float:
    """The mean share of the captions' squared L2 mass (full-width read-out) on ``columns``."""
    mass = []
    for a in range(0, len(hidden), chunk):
        h = torch.cat([hidden[a : a + chunk], empty[None]]).to(model.z_txt.device)
        mass.append(model.lexical_text(h).cpu()[:, columns].pow(2).sum(1))
    return float(torch.cat(mass).mean())


@torch.no_grad()
def _top_columns(model, hidden: torch.Tensor, empty: torch.Tensor, top_k: int, chunk: int) -> set[int]:
    """The union of each caption's ``top_k`` strongest word-start words under the full-width read-out. In
    chunks: N x V floats at once would be ~0.7 GB for 2,000 captions.

    Only word starts [choice]: Gemma's read-out of "a red circle" holds ``red`` and ``##red``, ``circle`` and
    ``##circle`` at about equal weight; a continuation piece is no word a person reads or types, and with
    both, an explanation shows each word twice."""
    starts = word_start_columns(model)
    support = set()
    for a in range(0, len(hidden), chunk):
        h = torch.cat([hidden[a : a + chunk], empty[None]]).to(model.z_txt.device)
        x = model.lexical_text(h).cpu()
        ranked = x if starts is None else x.masked_fill(~starts, -1.0)
        support.update(ranked.topk(min(top_k, x.shape[1]), dim=1).indices.flatten().tolist())
    return support


class FrozenText:
    """The training captions' cached LM states, and the read-out's columns.

    ``hidden[i]`` is caption i's final LM state, ``empty`` the empty text's (the calibration row). The text
    vectors follow from them in each step (:meth:`LexVLA.lexical_text`, through the text head when the model
    has one), exactly as ``encode_text`` computes them from the LM.
    """

    def __init__(
        self,
        model,
        captions: list[str],
        top_k: int,
        columns=None,
        progress=None,
        chunk: int = 256,
        words=(),
    ) -> None:
        self.index = {c: i for i, c in enumerate(dict.fromkeys(captions))}
        hidden, empty, self.computed = caption_hidden(model, list(self.index), progress=progress)
        self.share = None  # mean squared L2 mass the columns keep, when they are chosen here
        if columns is None:
            if model.image_cols.numel():
                raise ValueError("the model's read-out is already restricted; pass its columns")
            columns = word_columns(model, words)
            if top_k > 0 or not columns:
                columns |= _top_columns(model, hidden, empty, max(top_k, 1), chunk)
            self.columns = torch.tensor(sorted(columns), dtype=torch.long)
            self.share = _share(model, hidden, empty, self.columns, chunk)
        else:
            self.columns = torch.tensor(list(columns), dtype=torch.long)
        self.hidden, self.empty = hidden, empty  # (N, H), (H,)

    def rows(self, captions: list[str]) -> torch.Tensor:
        return torch.tensor([self.index[c] for c in captions], dtype=torch.long)


class FrozenTowers(nn.Module):
    """Towers' contract (pixels, ids, mask) -> (s_img, s_txt, d_img, d_txt, scale) with cached text: ``ids``
    holds each caption's row in the FrozenText table (B, 1), and the vectors are over the read-out's columns."""

    def __init__(self, model: nn.Module, text: FrozenText) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("hidden", text.hidden, persistent=False)
        self.register_buffer("empty", text.empty[None], persistent=False)

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
        rows = ids[:, 0]
        s_img, d_img = self.model.encode_image_columns(pixels)
        h = self.hidden[rows]
        calibrated = self.model.config.text_calibration
        s_txt = self.model.lexical_text(torch.cat([h, self.empty]) if calibrated else h)
        d_txt = None
        if self.model.dense_txt is not None:
            d_txt = F.normalize(self.model.dense_txt(self.hidden[rows]), dim=-1)
        return s_img, s_txt, d_img, d_txt, self.model.logit_scale()
