"""Training with a frozen text tower: each distinct caption runs through the LM once, ever.

With the LM frozen (no LoRA update), a caption's text vector never changes, so the image side (adapter, Z_img,
temperature, dense image head) can train against vectors computed once. What is cached on disk is the LM's
final hidden state h (H floats) of each caption's prompt, and of the empty text's prompt (the calibration row),
under ``LEXSEARCH_HOME/cache/text/<key>/``, key = hash of (base LM, prompt, calibration, text cut); entries
are keyed by the caption itself. The vector follows from h exactly as :meth:`LexVLA.encode_text` computes it.

The image read-out is what costs on a CPU: 145 tokens x H x V per image (V = 87,784 for Gemma 3: ~8 GFLOP).
Training restricts it to the columns the captions' vectors activate: the union of each caption's ``top_k``
strongest words. Scores are sums over words both sides hold, so on those columns the training loss is the
full model's loss with the image vector zero elsewhere; the model records the columns
(``ModelConfig.image_columns``) and inference reads the image out on them only too (same vectors as in
training, ~V/|columns| times cheaper). What it changes: an image can light up only words some training
caption's vector held among its top ones; a query word outside them scores nothing.
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

from lexsearch.model.lexvla import codebook_logits, elu1p

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


def text_logits(model, hidden: torch.Tensor, empty: torch.Tensor, columns: torch.Tensor | None = None):
    """Calibrated read-out logits of cached hidden states, as encode_text computes them: (N, V) or (N, |cols|)."""
    z = model.z_txt if columns is None else model.z_txt[columns]
    h = torch.cat([hidden, empty[None]]).to(z.device)
    logits = codebook_logits(h, z)
    a = model.config.text_calibration
    return logits[:-1] - a * logits[-1:] if a else logits[:-1]


class FrozenText:
    """The training captions' text vectors on the image read-out's columns, computed once from the cache.

    ``vectors[i]`` is caption i's s_txt (the full model's L2-normalised vector) restricted to ``columns``;
    ``hidden[i]`` its LM state, for the dense text head.
    """

    def __init__(
        self, model, captions: list[str], top_k: int, columns=None, progress=None, chunk: int = 256
    ) -> None:
        self.index = {c: i for i, c in enumerate(dict.fromkeys(captions))}
        distinct = list(self.index)
        hidden, empty, self.computed = caption_hidden(model, distinct, progress=progress)
        keep = model.keep.cpu()
        support, norms = set(), []
        # Full-width pass in chunks (N x V floats at once would be ~0.7 GB for 2,000 captions): each caption's
        # norm over all V words, and its top_k words for the union.
        for a in range(0, len(distinct), chunk):
            x = elu1p(text_logits(model, hidden[a : a + chunk], empty).cpu()) * keep
            norms.append(x.norm(dim=1).clamp_min(1e-12))
            support.update(x.topk(min(top_k, x.shape[1]), dim=1).indices.flatten().tolist())
        self.columns = torch.tensor(sorted(support) if columns is None else list(columns), dtype=torch.long)
        norm = torch.cat(norms)
        x = (
            elu1p(text_logits(model, hidden, empty, self.columns.to(model.z_txt.device)).cpu())
            * keep[self.columns]
        )
        self.vectors = x / norm[:, None]  # (N, |columns|): exactly s_txt's entries on these columns
        self.hidden = hidden  # (N, H)
        self.share = float(self.vectors.pow(2).sum(1).mean())  # mean squared L2 mass the columns keep

    def rows(self, captions: list[str]) -> torch.Tensor:
        return torch.tensor([self.index[c] for c in captions], dtype=torch.long)


class FrozenTowers(nn.Module):
    """Towers' contract (pixels, ids, mask) -> (s_img, s_txt, d_img, d_txt, scale) with cached text: ``ids``
    holds each caption's row in the FrozenText table (B, 1), and the vectors are over its columns."""

    def __init__(self, model: nn.Module, text: FrozenText) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("vectors", text.vectors, persistent=False)
        self.register_buffer("hidden", text.hidden, persistent=False)

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
        rows = ids[:, 0]
        s_img, d_img = self.model.encode_image_columns(pixels)
        s_txt = self.vectors[rows]
        d_txt = None
        if self.model.dense_txt is not None:
            d_txt = F.normalize(self.model.dense_txt(self.hidden[rows]), dim=-1)
        return s_img, s_txt, d_img, d_txt, self.model.logit_scale()
