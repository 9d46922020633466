"""Distil the LM text tower into the student query encoder (``lexsearch distill``).

The teacher is the trained model's own text side: the in-context prompt through the LM (with its LoRA), the
final hidden state h at the read-out position, then ``s_txt = L2norm(elu1p(h @ Z_txt^T))`` and the dense text
vector. The student (``lexsearch.model.student``) is a small bidirectional transformer over the text's own
tokenizer pieces; it predicts h' (LM width) and goes through the *same frozen* Z_txt and dense head, so it
only has to learn where the LM puts a text in its hidden space. At export Z_txt and the dense head are folded
into the student's output layer (``W_out = Z_txt @ P``), and the runtime needs no torch.

Recipe [choice]:
- texts: the captions, plus generic variants of each (a contiguous span, words dropped or shuffled, clauses
  swapped, words replaced by other caption words, filler words inserted - caption words or random letters -,
  capitals and punctuation changed) that teach the short, oddly typed queries people write; the teacher labels every variant;
- loss: ``|s' - s|^2`` on the L2-normalised lexical vectors (= 2 - 2 cos), the same on the dense vectors,
  and a small term on h' - h (scaled by h's variance) that speeds up the start;
- a *bank* of vectors a query is scored against: the model's own image vectors of the caption folder's images
  (sparsified and float16-rounded as an index stores them), or, without images, the teacher's vectors of
  some of the captions. Each text's scores against the bank are fused as a query fuses them (``(1 - a)
  lexical + a dense``, the lexical side with the query's sparsification). The distillation reports the
  held-out top-10 overlap of that ranking, student vs LM. Optional ranking terms pull the student's scores
  to the teacher's (a listwise KL of ``softmax(scores / tau)`` and the mean squared score error); they are
  off by default: on the toy world they did not raise the overlap of query results, and at a high weight
  they lowered it (docs/student.md);
- AdamW, cosine decay, for ``minutes`` of wall time or ``max_epochs`` (or ``max_steps``), whichever ends first;
- then the quality check (``lexsearch.model.student.GATE``): held-out cosine, top-3 word agreement and the
  share of texts whose top bank vector the LM also ranks in its top 10, student vs LM. A student that has not
  passed when the time budget ends trains on (a new, shorter cosine cycle, at half the learning rate after a
  first cycle of an epoch or more, checked again at its end) until it passes or the hard cap ``max_minutes``
  is reached; the teacher's labelling stops at half the cap, so the cap holds on a busy machine. A budget is not cut short once
  the check passes: the overlap of query results kept rising with training past it (docs/student.md). The
  verdict and its figures are written into ``student.json``; ``auto`` uses only a student that passed.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lexsearch.errors import DataError
from lexsearch.model.student import (
    GATE,
    STUDENT_CONFIG,
    STUDENT_WEIGHTS,
    StudentConfig,
    StudentRecord,
    passes,
    token_ids,
)
from lexsearch.model.vocab import caption_words

logger = logging.getLogger(__name__)

# How many captions a distillation reads at most from streaming shards (caption folders are read whole).
MAX_CAPTIONS = 200_000
# Weight of the dense cosine in a query's fused score (lexsearch.search.rerank.DENSE_WEIGHT; kept in step by a
# test rather than imported, so the distillation does not depend on the search package).
FUSED_DENSE_WEIGHT = 0.3


@dataclass
class DistillConfig:
    minutes: float = 3.0  # wall-time budget for labelling + training
    max_epochs: int = 60
    max_steps: int = 0  # a step budget (0: none); like max_epochs, a hard limit that no extension passes
    # Hard cap on the wall time when the student has not passed the quality check by ``minutes``
    # (0: 3 x minutes); ``minutes`` or less: no extension.
    max_minutes: float = 0.0
    variants: int = 8  # generic variants of each caption labelled by the teacher (0 = captions only)
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.01
    hidden_weight: float = 0.1  # weight of the |h' - h|^2 / var(h) term
    # The bank: vectors each text is scored against as a query scores images (the held-out top-10 overlap
    # with the LM's ranking is measured on it; 0 = none). The ranking terms over it are off by default:
    # on the toy world they did not raise the overlap of query results (docs/student.md).
    bank_size: int = 2048
    rank_weight: float = 0.0  # weight of the listwise KL of softmax(scores / rank_tau) over the bank
    rank_tau: float = 0.05  # its temperature (on fused scores in [0, 1])
    score_weight: float = 0.0  # weight of the mean squared fused-score error over the bank
    width: int = 128
    layers: int = 2
    heads: int = 4
    seed: int = 0
    device: str = "auto"


@dataclass
class DistillResult:
    student_dir: Path
    texts: int  # texts the teacher labelled (captions + variants)
    epochs: float
    minutes: float
    cosine: float  # mean cosine of student vs teacher lexical vectors on a held-out slice of the texts
    bank: str = ""  # what the ranking term scored against: "images", "texts" or "" (none)
    overlap: float = float("nan")  # held-out texts: mean top-10 overlap of the bank ranking, student vs LM
    passed: bool = (
        False  # the quality check (lexsearch.model.student.GATE): queries use only a student that passed
    )
    figures: dict[str, Any] = field(
        default_factory=dict
    )  # its held-out figures (cosine, words, top1, overlap)
    steps: int = 0
    extended: bool = False  # trained past ``minutes`` because the check had not passed yet
    kept_previous: bool = False  # failed, so not written: the folder keeps its earlier student that passed


# --------------------------------------------------------------------------------------------- the student
class Block(nn.Module):
    """Pre-LN transformer block, bidirectional; parameter names match the numpy runtime's keys."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width, eps=1e-5)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width, eps=1e-5)
        inner = int(width * mlp_ratio)
        self.fc1 = nn.Linear(width, inner)
        self.fc2 = nn.Linear(inner, width)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:  # (B, N, d), keep (B, N) bool
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])  # (B, h, N, hd)
        x = x + self.proj(o.transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))


class StudentNet(nn.Module):
    """The student in torch (training only): pieces -> CLS read-out c (B, d) -> h' (B, H)."""

    def __init__(self, arch: StudentConfig, lm_width: int) -> None:
        super().__init__()
        self.arch = arch
        d = arch.width
        self.tok_emb = nn.Parameter(torch.randn(arch.n_tokens, d) * 0.02)
        self.pos_emb = nn.Parameter(torch.randn(arch.max_tokens + 1, d) * 0.02)
        self.cls = nn.Parameter(torch.zeros(d))
        self.layers = nn.ModuleList(Block(d, arch.heads, arch.mlp_ratio) for _ in range(arch.layers))
        self.ln_f = nn.LayerNorm(d, eps=1e-5)
        self.to_hidden = nn.Linear(d, lm_width)  # P: folded into the output layer at export

    def readout(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, L), (B, L) -> (B, d)
        b, n = ids.shape
        x = torch.cat([self.cls.expand(b, 1, -1), self.tok_emb[ids]], dim=1) + self.pos_emb[: n + 1]
        keep = torch.cat([mask.new_ones(b, 1), mask], dim=1).bool()
        for layer in self.layers:
            x = layer(x, keep)
        return self.ln_f(x[:, 0])

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.to_hidden(self.readout(ids, mask))

    def export(
        self, readout: TextReadout | torch.Tensor, dense_head: nn.Linear | None
    ) -> dict[str, np.ndarray]:
        """numpy weights for ``StudentEncoder``: the text read-out (``TextReadout``: text head, calibration,
        columns; or a bare (V, H) Z_txt) and the dense head folded into the output layer."""
        if isinstance(readout, torch.Tensor):
            z = readout.detach().float()
            keep = torch.ones(z.shape[0], device=z.device)
            readout = TextReadout(z, torch.zeros(z.shape[0], device=z.device), None, keep, int(z.shape[0]))
        out = {}
        for name, t in self.state_dict().items():
            if not name.startswith("to_hidden."):
                out[name] = t
        p_w, p_b = self.to_hidden.weight.detach().double(), self.to_hidden.bias.detach().double()
        w = readout.weight.detach().double()
        out["out.weight"] = w @ p_w  # (C, d)
        out["out.bias"] = w @ p_b + readout.bias.detach().double()  # (C,)
        if dense_head is not None:
            dw, db = dense_head.weight.detach().double(), dense_head.bias.detach().double()
            out["dense.weight"] = dw @ p_w  # (D, d)
            out["dense.bias"] = dw @ p_b + db  # (D,)
        arrays = {k: v.detach().float().cpu().contiguous().numpy() for k, v in out.items()}
        if readout.columns is not None:
            arrays["out.columns"] = readout.columns.detach().cpu().numpy().astype(np.int64)
        return arrays


@dataclass
class TextReadout:
    """The model's text read-out as one affine map of the LM state h, on the read-out's columns:
    ``s_txt = L2norm(elu1p(h @ weight^T + bias) * keep)`` there, zero on the other columns.

    Everything from h to the logits is linear: the text head is ``M h`` with ``M = I + U D``, the read-out
    ``Z_txt[columns] M h``, the calibration subtracts ``a Z_txt[columns] M h0`` (h0: the empty text's state).
    So ``weight = Z_txt[columns] M`` and ``bias = -a weight h0``; the student predicts h and its export folds
    both into its output layer. Without head, columns and calibration it is ``h @ Z_txt^T``, as before."""

    weight: torch.Tensor  # (C, H) float32
    bias: torch.Tensor  # (C,)
    columns: torch.Tensor | None  # (C,) vocabulary columns, None = all V
    keep: torch.Tensor  # (C,) the model's mask on these columns
    width: int  # V: the full vector's width (the threshold sparsification's 1/sqrt(V))

    def lexical(self, h: torch.Tensor) -> torch.Tensor:
        """s_txt on the columns (B, C) of LM states h (B, H), as ``LexVLA.lexical_text``."""
        return F.normalize((F.elu(h.float() @ self.weight.T + self.bias) + 1.0) * self.keep, dim=-1)

    def to(self, device: torch.device) -> TextReadout:
        cols = None if self.columns is None else self.columns.to(device)
        return TextReadout(
            self.weight.to(device), self.bias.to(device), cols, self.keep.to(device), self.width
        )


@torch.no_grad()
def text_readout(model: Any, h0: torch.Tensor | None) -> TextReadout:
    """The ``TextReadout`` of a LexVLA; ``h0`` (H,) the empty text's LM state (needed when calibrated)."""
    cols = model.image_cols if model.image_cols.numel() else None
    z = (model.z_txt if cols is None else model.z_txt[cols]).double()  # (C, H)
    if model.text_head is not None:  # Z M = Z + (Z U) D
        head = model.text_head
        z = z + (z @ head.up.weight.double()) @ head.down.weight.double()
    a = float(model.config.text_calibration or 0.0)
    bias = torch.zeros(z.shape[0], dtype=torch.float64, device=z.device)
    if a:
        if h0 is None:
            raise ValueError("a calibrated read-out needs the empty text's state h0")
        bias = -a * (z @ h0.double().to(z.device))
    keep = model.keep if cols is None else model.keep[cols]
    return TextReadout(z.float(), bias.float(), cols, keep.float().clone(), int(model.vocab_size))


# --------------------------------------------------------------------------------------------- the texts
def read_captions(source: str | Path, limit: int = MAX_CAPTIONS) -> list[str]:
    """Captions of a ``--data`` source (caption folder or shards), unique, in order of first appearance."""
    from lexsearch.data.pairs import load_pairs

    data = load_pairs(source)
    if hasattr(data, "captions"):
        captions = list(data.captions)
    else:
        captions = []
        for pair in data:
            captions.append(pair.caption)
            if len(captions) >= limit:
                break
    captions = list(dict.fromkeys(c.strip() for c in captions if c and c.strip()))[:limit]
    if not captions:
        raise DataError(f"{source}: no captions to distil on")
    return captions


def _filler(rng: random.Random, words: Sequence[str]) -> str:
    """A word the caption did not have: a vocabulary word, or random letters (a word the tokenizer splits)."""
    if words and rng.random() < 0.5:
        return rng.choice(words)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 7)))


def variants(caption: str, n: int, rng: random.Random, vocabulary: Sequence[str] = ()) -> list[str]:
    """``n`` generic rewrites of a caption: what queries look like (short, partial, reordered, with words the
    captions never use, any capitalisation). ``vocabulary``: words to draw fillers from."""
    out: list[str] = []
    for _ in range(n):
        w = caption.split()
        for kind in rng.sample(range(6), rng.randint(1, 2)):
            if kind == 0 and len(w) > 1:  # a contiguous span: "red circle" out of "a red circle and ..."
                a = rng.randrange(len(w))
                w = w[a : rng.randrange(a, min(len(w), a + 4)) + 1]
            elif kind == 1 and len(w) > 2:  # some words dropped
                w = [x for x in w if rng.random() > 0.3] or w[:1]
            elif kind == 2 and " and " in " ".join(w):  # clauses swapped
                parts = " ".join(w).split(" and ")
                rng.shuffle(parts)
                w = " and ".join(parts).split()
            elif kind == 3:  # words in another order
                rng.shuffle(w)
            elif kind == 4:  # one to three words the caption did not have, anywhere
                for _ in range(rng.randint(1, 3)):
                    w.insert(rng.randint(0, len(w)), _filler(rng, vocabulary))
            elif kind == 5 and vocabulary:  # words swapped for other caption words: combinations never seen
                for _ in range(rng.randint(1, 2)):
                    w[rng.randrange(len(w))] = rng.choice(vocabulary)
        case = rng.randrange(4)  # capitals: as typed, Title, some words UPPER, or lower with a capital first
        if case == 1:
            w = [x.capitalize() for x in w]
        elif case == 2:
            w = [x.upper() if rng.random() < 0.5 else x for x in w]
        elif case == 3 and w:
            w = [w[0].capitalize()] + [x.lower() for x in w[1:]]
        if rng.random() < 0.2:  # punctuation between or after words
            w = [x + rng.choice(",;:.!?") if rng.random() < 0.3 else x for x in w]
        out.append(" ".join(w))
    return out


# --------------------------------------------------------------------------------------------- the recipe
def _pad(rows: Sequence[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(1, max(len(r) for r in rows))
    ids = torch.zeros((len(rows), length), dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def teacher_hidden(
    model: Any,
    texts: Sequence[str],
    device: torch.device,
    batch_size: int = 128,
    progress: Callable[[int], None] | None = None,
    deadline: float | None = None,
) -> torch.Tensor:
    """The LM's read-out hidden state h (n, H) of each text, with the model's prompt: the teacher. Past
    ``deadline`` (``time.monotonic()``) it stops after the batch in hand: h of the first texts only."""
    parts = []
    for start in range(0, len(texts), batch_size):
        if parts and deadline is not None and time.monotonic() > deadline:
            break
        ids, mask = model.tokenize(list(texts[start : start + batch_size]))
        parts.append(model.text_hidden(ids.to(device), mask.to(device)).float().cpu())
        if progress is not None:
            progress(min(batch_size, len(texts) - start))
    return torch.cat(parts)


def read_images(source: str | Path, limit: int) -> list[Any]:
    """Up to ``limit`` images of a caption folder (their files; evenly spread), or [] for other sources."""
    from lexsearch.data.pairs import load_pairs

    data = load_pairs(source)
    keys = list(getattr(data, "images", []))
    if not keys or limit <= 0:
        return []
    pick = np.linspace(0, len(keys) - 1, min(limit, len(keys))).round().astype(int)
    return [partial(data.load_image, keys[i]) for i in dict.fromkeys(pick.tolist())]


@dataclass
class ScoreBank:
    """What the ranking term scores each text against: (N, V) sparsified lexical and (N, D) dense vectors."""

    sparse: torch.Tensor
    dense: torch.Tensor | None
    source: str  # "images" | "texts"
    width: int = 0  # V when ``sparse`` holds only the text read-out's columns (0: it is full width)


def kept(s: torch.Tensor, mode: str, k: int, width: int = 0) -> torch.Tensor:
    """The model's sparsification of (B, V) vectors in torch, differentiable where an entry is kept.

    ``width``: the full vectors' V when ``s`` holds only some columns of them (the others zero)."""
    if mode == "threshold":
        return s * (s > 1.0 / math.sqrt(width or s.shape[-1])).to(s.dtype)
    if mode == "topk" and k < s.shape[-1]:
        mask = torch.zeros_like(s).scatter_(-1, s.detach().topk(k, dim=-1).indices, 1.0)
        return s * mask
    return s


def _stored(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """As an index stores image vectors: float16 values, read back as float32."""
    return torch.as_tensor(np.asarray(x, dtype=np.float32)).half().float()


def image_bank(
    encoder: Any, images: Sequence[Callable[[], Any]], deadline: float, batch_size: int = 64
) -> ScoreBank | None:
    """The model's vectors of ``images`` (loaders), as an index stores them; stops early at ``deadline``."""
    sparse, dense = [], []
    for start in range(0, len(images), batch_size):
        if time.monotonic() > deadline:
            break
        enc = encoder.encode_images([load() for load in images[start : start + batch_size]])
        sparse.append(enc.sparse.toarray())
        if enc.dense is not None:
            dense.append(enc.dense)
    if not sparse:
        return None
    return ScoreBank(
        _stored(np.concatenate(sparse)), _stored(np.concatenate(dense)) if dense else None, "images"
    )


def fused_scores(s: torch.Tensor, d: torch.Tensor | None, bank: ScoreBank, mode: str, k: int) -> torch.Tensor:
    """(B, N) scores of texts against the bank as a query ranks them: lexical over the sparsified query,
    fused with the dense cosine when both sides have dense vectors."""
    lexical = kept(s, mode, k, bank.width) @ bank.sparse.T
    if d is None or bank.dense is None:
        return lexical
    return (1.0 - FUSED_DENSE_WEIGHT) * lexical + FUSED_DENSE_WEIGHT * (d @ bank.dense.T)


def rank_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """Listwise KL(teacher || student) of softmax(scores / tau) over the bank, mean over texts."""
    log_p = F.log_softmax(teacher / tau, dim=-1)
    log_q = F.log_softmax(student / tau, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def top_overlap(student: torch.Tensor, teacher: torch.Tensor, top: int = 10) -> float:
    """Mean |top(student) & top(teacher)| / top over rows of (B, N) scores."""
    top = min(top, teacher.shape[1])
    a, b = student.topk(top, dim=1).indices, teacher.topk(top, dim=1).indices
    return float((a[:, :, None] == b[:, None, :]).any(-1).float().mean())


def agreement(
    s_hat: torch.Tensor,
    s: torch.Tensor,
    scores_hat: torch.Tensor | None = None,
    scores: torch.Tensor | None = None,
    words: int = 3,
    top: int = 10,
    tie: float = 0.01,
) -> dict[str, float]:
    """How closely a student's (B, V) lexical vectors ``s_hat`` follow the LM's ``s`` (and its (B, N) bank
    scores theirs): the quality check's figures (lexsearch.model.student.GATE).

    cosine: mean cosine; words: mean share of the LM's top-``words`` vocabulary entries among the student's;
    top1: share of rows whose top-scored bank vector the LM scores at least as high as its own ``top``-th,
    less ``tie`` (near-ties count: a toy collection holds hundreds of images with the same words, whose
    scores differ in the third decimal, while a wrong colour or shape costs tenths); overlap: mean
    top-``top`` overlap (exact)."""
    cos = F.cosine_similarity(s_hat, s, dim=-1)
    k = min(words, s.shape[1])
    a, b = s_hat.topk(k, dim=1).indices, s.topk(k, dim=1).indices
    out = {
        "cosine": float(cos.mean()),
        "words": float((a[:, :, None] == b[:, None, :]).any(-1).float().mean()),
    }
    if scores_hat is not None and scores is not None and scores.shape[1] > 0:
        n = min(top, scores.shape[1])
        tenth = scores.topk(n, dim=1).values[:, -1]
        first = scores.gather(1, scores_hat.argmax(dim=1, keepdim=True))[:, 0]
        out["top1"] = float((first >= tenth - tie).float().mean())
        out["overlap"] = top_overlap(scores_hat, scores, top)
    return out


def distill(
    model_dir: str | Path,
    captions: Sequence[str],
    config: DistillConfig | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    images: Sequence[Callable[[], Any]] = (),
) -> DistillResult:
    """Train the student of the model in ``model_dir`` on ``captions`` and write it into that folder.

    ``images``: loaders of images whose vectors make the ranking term's bank (e.g. ``read_images`` of the
    caption folder); without them the bank is the teacher's vectors of some of the captions.
    ``progress(stage, done, total)`` is called as texts are labelled ("label") and steps run ("train").
    """
    from safetensors.numpy import save_file

    from lexsearch.model.encoder import Encoder

    cfg = config or DistillConfig()
    t0 = time.monotonic()
    budget = cfg.minutes * 60.0
    tick = progress or (lambda stage, done, total: None)
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)

    encoder = Encoder.load(model_dir, device=cfg.device)
    model, device = encoder.model, encoder.device
    backend = encoder.vocab.backend
    mcfg = model.config

    texts = list(dict.fromkeys(captions))
    vocabulary = sorted({w.strip(".,;:!?").lower() for c in texts for w in c.split()} - {""})
    for c in list(texts):
        texts.extend(variants(c, cfg.variants, rng, vocabulary))
    texts = list(dict.fromkeys(texts))
    rng.shuffle(texts)
    done = [0]

    def labelled(n: int) -> None:
        done[0] += n
        tick("label", done[0], len(texts))

    cap = t0 + 60.0 * max(cfg.minutes, cfg.max_minutes if cfg.max_minutes > 0 else 3.0 * cfg.minutes)
    # On a busy machine labelling alone can outlast the cap: it stops at half of it (the texts are shuffled,
    # so the first ones are a sample of all), leaving the other half to train, and the cap holds.
    hidden = teacher_hidden(model, texts, device, progress=labelled, deadline=t0 + 0.5 * (cap - t0))  # (n, H)
    texts = texts[: len(hidden)]
    # The teacher's vector is the model's own (text head, calibration, columns: ``TextReadout``).
    h0 = teacher_hidden(model, [""], device)[0] if mcfg.text_calibration else None
    readout = text_readout(model, h0).to(device)  # frozen
    lm_width = int(readout.weight.shape[1])
    dense_head = model.dense_txt
    arch = StudentConfig(
        n_tokens=int(backend.get_vocab_size()),
        vocab_size=int(readout.width),
        width=cfg.width,
        layers=cfg.layers,
        heads=cfg.heads,
        max_tokens=int(mcfg.max_text_tokens),
        dense_dim=int(mcfg.dense_dim or 0),
    )
    ids_all = token_ids(backend, texts, arch.max_tokens)
    # A held-out slice measures how close the student gets on texts it never trained on.
    # At least 16 where there are texts enough: the quality check is measured on them.
    n_val = min(max(len(texts) // 10, min(16, len(texts) // 4)), 2000)
    val_idx, train_idx = np.arange(n_val), np.arange(n_val, len(texts))
    net = StudentNet(arch, lm_width).to(device)
    h_var = hidden.var(0).mean().clamp_min(1e-8).item()

    def targets(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        s = readout.lexical(h)  # (B, C): the read-out's columns only (zero elsewhere)
        d = F.normalize(dense_head(h), dim=-1) if dense_head is not None else None
        return s, d

    mode, top_k = mcfg.sparsify, int(mcfg.top_k)
    bank = None
    if cfg.bank_size > 0 and images:
        # The image side may take at most a quarter of what is left of the budget; fewer images if slower.
        deadline = time.monotonic() + 0.25 * max(0.0, budget - (time.monotonic() - t0))
        bank = image_bank(encoder, list(images)[: cfg.bank_size], deadline)
        if bank is not None and readout.columns is not None:  # scored on the text read-out's columns
            cols = readout.columns.cpu()
            bank = ScoreBank(bank.sparse[:, cols], bank.dense, bank.source, readout.width)
    row = {t: i for i, t in enumerate(texts)}
    # (Captions whose labelling a busy machine cut short are left out.)
    idx = [row[c] for c in dict.fromkeys(captions) if c in row][: cfg.bank_size]
    if cfg.bank_size > 0 and bank is None and idx:
        with torch.no_grad():
            s, d = targets(hidden[idx].to(device))
            width = readout.width if readout.columns is not None else 0
            bank = ScoreBank(
                _stored(kept(s, mode, top_k, width).cpu()),
                None if d is None else _stored(d.cpu()),
                "texts",
                width,
            )
    if bank is not None:
        bank = ScoreBank(
            bank.sparse.to(device),
            None if bank.dense is None else bank.dense.to(device),
            bank.source,
            bank.width,
        )

    def loss_of(idx: np.ndarray) -> torch.Tensor:
        ids, mask = _pad([ids_all[i] for i in idx], device)
        h = hidden[torch.as_tensor(idx)].to(device)
        h_hat = net(ids, mask)
        with torch.no_grad():
            s, d = targets(h)
        s_hat, d_hat = targets(h_hat)
        loss = ((s_hat - s) ** 2).sum(-1).mean() + cfg.hidden_weight * ((h_hat - h) ** 2).mean() / h_var
        if d is not None:
            loss = loss + ((d_hat - d) ** 2).sum(-1).mean()
        if bank is not None and (cfg.rank_weight > 0 or cfg.score_weight > 0):
            with torch.no_grad():
                t = fused_scores(s, d, bank, mode, top_k)
            t_hat = fused_scores(s_hat, d_hat, bank, mode, top_k)
            if cfg.rank_weight > 0:
                loss = loss + cfg.rank_weight * rank_loss(t_hat, t, cfg.rank_tau)
            if cfg.score_weight > 0:
                loss = loss + cfg.score_weight * ((t_hat - t) ** 2).mean()
        return loss

    @torch.no_grad()
    def measure() -> dict[str, float]:
        """The quality check's figures on the held-out texts (in slices: the bank scores are (n, N))."""
        net.eval()
        parts: dict[str, list[torch.Tensor]] = {"s_hat": [], "s": [], "t_hat": [], "t": []}
        for begin in range(0, n_val, 256):
            idx = val_idx[begin : begin + 256]
            ids, mask = _pad([ids_all[i] for i in idx], device)
            s, d = targets(hidden[torch.as_tensor(idx)].to(device))
            s_hat, d_hat = targets(net(ids, mask))
            parts["s_hat"].append(s_hat.cpu())
            parts["s"].append(s.cpu())
            if bank is not None:
                parts["t_hat"].append(fused_scores(s_hat, d_hat, bank, mode, top_k).cpu())
                parts["t"].append(fused_scores(s, d, bank, mode, top_k).cpu())
        net.train()
        if not parts["s"]:
            return {}
        cat = {k: torch.cat(v) if v else None for k, v in parts.items()}
        return agreement(cat["s_hat"], cat["s"], cat["t_hat"], cat["t"])

    steps_per_epoch = max(1, math.ceil(len(train_idx) / cfg.batch_size))
    total = steps_per_epoch * cfg.max_epochs
    if cfg.max_steps > 0:
        total = min(total, cfg.max_steps)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng_np = np.random.default_rng(cfg.seed)

    def batches():
        while True:  # epochs, each in a fresh order
            perm = rng_np.permutation(train_idx)
            for begin in range(0, len(perm), cfg.batch_size):
                yield perm[begin : begin + cfg.batch_size]

    stream = batches()
    step = 0

    def train_phase(start: float, end: float, lr: float) -> None:
        """One cosine cycle from ``lr`` to 0, on time (``start`` to ``end``) and on the steps left: a short
        budget still ends at a low learning rate."""
        nonlocal step
        first = step
        while step < total:
            frac = max(
                (step - first) / max(1, total - first), (time.monotonic() - start) / max(end - start, 1e-9)
            )
            if frac >= 1.0:
                break
            warm = min(1.0, (step + 1) / 50)
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * frac)) * warm
            loss = loss_of(next(stream))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            tick("train", step, total)

    net.train()
    train_phase(t0, t0 + budget, cfg.lr)
    figures = measure() if n_val else {}
    extended = False
    # Not good enough yet: train on in shorter cycles, each checked at its end, up to the hard cap.
    while n_val and not passes(figures) and step < total and time.monotonic() < cap - 1.0:
        extended = True
        now = time.monotonic()
        # Half the learning rate after a full first cycle; the full one when labelling left it few steps.
        lr = 0.5 * cfg.lr if step >= steps_per_epoch else cfg.lr
        train_phase(now, min(cap, now + max(30.0, 0.5 * budget)), lr)
        figures = measure()
        logger.info("student after %d steps: %s", step, figures)
    passed = passes(figures)
    net.eval()
    cos, overlap = figures.get("cosine", float("nan")), figures.get("overlap", float("nan"))
    out_dir = Path(model_dir)
    weights = net.export(readout, dense_head)
    minutes = (time.monotonic() - t0) / 60.0
    gate = {
        "passed": passed,
        "figures": {k: round(v, 4) for k, v in figures.items()},
        "required": dict(GATE),
        "heldout_texts": int(n_val),
    }
    record = StudentRecord(
        teacher_model_id=encoder.model_id,
        sparsify=mcfg.sparsify,
        top_k=int(mcfg.top_k),
        threshold=float(mcfg.threshold),
        id=f"{encoder.model_id}-{int(time.time())}-{secrets.token_hex(4)}",  # unique: keys the query cache
        words=sorted(caption_words(c for c in dict.fromkeys(captions) if c in row)),
        distill={
            **asdict(cfg),
            "texts": len(texts),
            "captions": len(captions),
            "steps": step,
            "extended": extended,
            "minutes": round(minutes, 2),
            "heldout_cosine": round(cos, 4),
            "bank": bank.source if bank is not None else "",
            "bank_vectors": int(bank.sparse.shape[0]) if bank is not None else 0,
            "heldout_bank_top10_overlap": round(overlap, 4),
            "gate": gate,
        },
    )
    kept_previous = not passed and _has_passing_student(out_dir, encoder.model_id)
    if not kept_previous:  # a failed student never replaces one of these weights that passed
        # Weights first, JSON last: a student is only picked up once its JSON exists (an interrupted run
        # leaves none).
        (out_dir / STUDENT_CONFIG).unlink(missing_ok=True)
        save_file(weights, str(out_dir / STUDENT_WEIGHTS))
        tmp = out_dir / (STUDENT_CONFIG + ".tmp")
        tmp.write_text(record.to_json(arch))
        tmp.replace(out_dir / STUDENT_CONFIG)
    logger.info(
        "student written to %s (%d steps, %s the quality check: %s)",
        out_dir,
        step,
        "passed" if passed else "failed",
        figures,
    )
    return DistillResult(
        out_dir,
        len(texts),
        step / steps_per_epoch,
        minutes,
        cos,
        bank.source if bank else "",
        overlap,
        passed=passed,
        figures=dict(figures),
        steps=step,
        extended=extended,
        kept_previous=kept_previous,
    )


def _has_passing_student(model_dir: Path, model_id: str) -> bool:
    """Whether ``model_dir`` already holds a student of these weights that passed its quality check."""
    from lexsearch.errors import ModelError
    from lexsearch.model.student import gate_verdict, read_student_record, student_exists

    if not student_exists(model_dir):
        return False
    try:
        record = read_student_record(model_dir)
    except ModelError:
        return False
    return record.get("teacher_model_id") == model_id and gate_verdict(record)[0]
