"""The LexVLA training loop: the paper's recipe, exact at any batch size, resumable, on one process or many.

Per step (LEXVLA.md, Training):

    L = InfoNCE(i2t) + InfoNCE(t2i) + ramp(lambda_I) overuse(S_img) + ramp(lambda_T) overuse(S_txt)
        [+ dense_weight * InfoNCE of the dense heads, beyond the paper, when the model has them]

over the *global* batch. A batch too large for memory is run GradCache-style (Gao et al., "Scaling Deep
Contrastive Learning Batch Size under Memory Limited Setup", RepL4NLP 2021): (1) encode every micro-batch
without a graph, (2) compute the loss on the full feature matrices (all-gathered across ranks) and its
gradient with respect to the features, (3) re-encode each micro-batch with a graph, restoring the RNG so
dropout draws the same masks, and backpropagate the cached feature gradients. The gradients equal those of
one big-batch step; only activations of one micro-batch are alive at a time.

Outputs in ``config.out``: the model (``save_checkpoint``), ``train_config.json``, ``train_log.jsonl`` and the
resume state (``train_state.safetensors`` for tensors: optimiser moments, RNG states; ``train_state.json`` for
the rest). Nothing is pickled.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from lexsearch.errors import UsageError
from lexsearch.model.encoder import autocast, sparsify_vectors
from lexsearch.train import distributed as D
from lexsearch.train.batches import (
    Batches,
    backbone_tokens,
    check_images,
    image_batches,
    load_data,
    steps_per_epoch,
)
from lexsearch.train.config import TrainConfig
from lexsearch.train.losses import get_regulariser, info_nce_terms, quadratic_ramp
from lexsearch.train.state import STATE_JSON, load_state, save_state

log = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"
MODEL_CONFIG = "config.json"  # lexsearch.model.config.CONFIG_FILE: written last by every checkpoint

# Under --max-minutes, the share of the budget the tiny preset's base pretraining may take (the rest trains
# the model). At the demo's 8 minutes that is the LM's full 1,500 steps on an idle 2-core CPU (~4 min).
BASES_SHARE = 0.6
# Under --max-minutes, at most this share of the budget goes to the final validation (on fewer held-out
# images when all of them would take longer), and the held-out images its cost is measured on beforehand.
FINAL_SHARE = 0.25
# The backbone-token cache saves ~35% of each tiny step: under --max-minutes it is built only when its
# projected time (from its first batch) is at most this share of the time left.
CACHE_SHARE = 0.25
# Kept free at the end of a budget: the estimates above are timed on CPUs other jobs share, and a load that
# changed during the demo (~15 -> ~6 on 2 cores) made its final validation outrun the estimate by ~18 s of 480.
SAFETY_SHARE = 0.05
PROBE_IMAGES = 24


# ------------------------------------------------------------------------------------------ results
@dataclass
class StepStats:
    """One step's loss parts and batch statistics (floats, for the log)."""

    loss: float
    i2t: float
    t2i: float
    reg_img: float
    reg_txt: float
    lambda_img: float
    lambda_txt: float
    dense: float
    logit_scale: float
    active_img: float  # mean entries > 1/sqrt(V) per image vector of the global batch
    active_txt: float


@dataclass
class Progress:
    """What the progress callback receives after every step."""

    step: int  # steps done
    total_steps: int
    epoch: int
    loss: float
    lr: float
    steps_per_s: float


@dataclass
class TrainResult:
    out: Path
    step: int
    total_steps: int
    stopped_early: bool  # stopped by max_minutes / stop_at_step before total_steps
    loss: float
    steps_per_s: float
    minutes: float
    val: dict | None  # the final validation (R@K both ways, active dims), None if none ran


# ------------------------------------------------------------------------------------------ the step
class Towers(nn.Module):
    """Both encoders as one forward, which is what DDP wraps: (pixels, ids, mask) -> features and the scale.

    The logit scale is an output so that its gradient flows through the same (DDP-averaged) backward as
    everything else.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
        s_img, d_img = self.model.encode_image(pixels)  # (b, V), (b, D) | None
        s_txt, d_txt = self.model.encode_text(ids, mask)
        return s_img, s_txt, d_img, d_txt, self.model.logit_scale()


def compute_loss(feats, scale: torch.Tensor, step: int, config: TrainConfig, vocab_size: int):
    """(total loss, stats) on global feature matrices ``feats = (s_img, s_txt, d_img, d_txt)``."""
    s_img, s_txt, d_img, d_txt = feats
    i2t, t2i = info_nce_terms(s_img, s_txt, scale)
    reg = get_regulariser(config.reg)
    factor = config.lambda_scale(vocab_size)
    lam_i = quadratic_ramp(step, config.lambda_img * factor, config.ramp_steps)
    lam_t = quadratic_ramp(step, config.lambda_txt * factor, config.ramp_steps)
    reg_img, reg_txt = reg(s_img), reg(s_txt)
    total = i2t + t2i + lam_i * reg_img + lam_t * reg_txt
    dense = torch.zeros((), device=s_img.device)
    if d_img is not None and config.dense_weight > 0:
        di2t, dt2i = info_nce_terms(d_img, d_txt, 1.0 / config.dense_temperature)
        dense = di2t + dt2i
        total = total + config.dense_weight * dense
    elif d_img is not None and d_img.requires_grad:
        # Dense heads that take no part in the loss would leave their parameters without a gradient, which
        # DDP reports as an error at the next step; a zero-weighted term gives them an exact zero gradient.
        total = total + 0.0 * (d_img.sum() + d_txt.sum())
    with torch.no_grad():
        thr = 1.0 / math.sqrt(vocab_size)
        stats = StepStats(
            loss=float(total),
            i2t=float(i2t),
            t2i=float(t2i),
            reg_img=float(reg_img),
            reg_txt=float(reg_txt),
            lambda_img=lam_i,
            lambda_txt=lam_t,
            dense=float(dense),
            logit_scale=float(scale),
            active_img=float((s_img > thr).sum(1).float().mean()),
            active_txt=float((s_txt > thr).sum(1).float().mean()),
        )
    return total, stats


def _rng_state(device: torch.device):
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _chunks(n: int, size: int) -> list[slice]:
    size = n if size <= 0 else size
    return [slice(a, min(a + size, n)) for a in range(0, n, size)]


def _trim(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop padding columns no row of a micro-batch needs (right padding; the result is unchanged)."""
    length = int(mask.sum(1).max())
    return ids[:, :length], mask[:, :length]


def train_step(
    towers: nn.Module,
    pixels: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    step: int,
    config: TrainConfig,
    info: D.DistInfo,
    vocab_size: int,
) -> StepStats:
    """Forward and backward of one global-batch step; leaves the gradients in ``.grad`` (no optimiser step).

    ``pixels``/``ids``/``mask`` are this rank's share of the global batch. With ``config.micro_batch_size``
    smaller than the share, runs the GradCache two-pass; the gradients are the whole batch's either way.
    """
    device = info.device
    parts = _chunks(pixels.shape[0], config.micro_batch_size)
    dense_on = config.dense_weight > 0

    def forward(sl: slice):
        i, m = _trim(ids[sl], mask[sl])
        with autocast(device):
            return towers(pixels[sl], i, m)

    if len(parts) == 1:  # the plain path: one graph for the whole (per-rank) batch
        s_img, s_txt, d_img, d_txt, scale = forward(parts[0])
        feats = [
            D.gather_features(t.float(), info) if t is not None else None
            for t in (s_img, s_txt, d_img, d_txt)
        ]
        total, stats = compute_loss(feats, scale, step, config, vocab_size)
        total.backward()
        return stats

    # GradCache pass 1: features of every micro-batch, no graph; remember each micro-batch's RNG state.
    raw = D.unwrap(towers)
    states, outs = [], []
    with torch.no_grad():
        for sl in parts:
            states.append(_rng_state(device))
            i, m = _trim(ids[sl], mask[sl])
            with autocast(device):
                outs.append(raw(pixels[sl], i, m))
    after = _rng_state(device)
    local = [
        None
        if outs[0][k] is None
        else torch.cat([o[k].float() for o in outs]).requires_grad_(k < 2 or dense_on)
        for k in range(4)
    ]
    scale = outs[0][4].detach().float().requires_grad_(True)
    # Pass 2: loss on the global matrices -> gradients with respect to this rank's features (and the scale).
    feats = [D.gather_features(t, info) if t is not None else None for t in local]
    total, stats = compute_loss(feats, scale, step, config, vocab_size)
    total.backward()
    grads = [None if t is None else (t.grad if t.grad is not None else torch.zeros_like(t)) for t in local]
    # Pass 3: re-encode each micro-batch with a graph and push the cached gradients through it. DDP syncs
    # gradients only on the last micro-batch; the scale's gradient is pushed once, there.
    for n, sl in enumerate(parts):
        last = n == len(parts) - 1
        _set_rng_state(states[n], device)
        with D.no_sync(towers, skip=not last):
            out = forward(sl)
            tensors, tensor_grads = [], []
            for k in range(4):
                if out[k] is not None:
                    tensors.append(out[k].float())
                    tensor_grads.append(grads[k][sl])
            tensors.append(out[4].float())
            tensor_grads.append(scale.grad if last else torch.zeros_like(scale))
            torch.autograd.backward(tensors, tensor_grads)
    _set_rng_state(after, device)
    return stats


# ------------------------------------------------------------------------------------------ validation
@torch.no_grad()
def encode_pairs(model, pairs, device: torch.device, batch_size: int = 64, num_workers: int = 0):
    """(images (N_img, V), captions (N_txt, V)) of a FolderPairs as CSR rows, sparsified as the paper does
    (entries above 1/sqrt(V)); rows in ``pairs.images`` / ``pairs.captions`` order."""
    import scipy.sparse as sp

    was_training = model.training
    model.eval()
    try:
        img_rows = []
        for pixels in image_batches(pairs, model.config, batch_size, num_workers):
            with autocast(device):
                img_rows.append(sparsify_vectors(model.encode_image(pixels.to(device))[0], "threshold", 0))
        txt_rows = []
        for a in range(0, len(pairs.captions), batch_size):
            ids, mask = model.tokenize(pairs.captions[a : a + batch_size])
            with autocast(device):
                txt_rows.append(
                    sparsify_vectors(model.encode_text(ids.to(device), mask.to(device))[0], "threshold", 0)
                )
    finally:
        model.train(was_training)
    return sp.vstack(img_rows, format="csr"), sp.vstack(txt_rows, format="csr")


def validate(model, pairs, device: torch.device, batch_size: int = 64, num_workers: int = 0) -> dict:
    """R@1/5/10 both ways on a FolderPairs with the paper's 1/sqrt(V) sparsification, and active dims."""
    from lexsearch.eval.retrieval import recall_from_vectors

    img, txt = encode_pairs(model, pairs, device, batch_size, num_workers)
    recall = recall_from_vectors(txt, img, pairs.caption_image)
    return {
        "t2i": {f"R@{k}": v for k, v in recall.t2i.items()},
        "i2t": {f"R@{k}": v for k, v in recall.i2t.items()},
        "active_img": float(img.getnnz(axis=1).mean()),
        "active_txt": float(txt.getnnz(axis=1).mean()),
        "n_images": recall.n_images,
        "n_texts": recall.n_texts,
    }


# ------------------------------------------------------------------------------------------ optimiser
# The cut-off of a frozen-text model's vectors. On the toy world (13 columns, R@1 58.4 / 59.2 unsparsified;
# docs/toy-results.md 4): 0.08 -> 58.6, 0.10 -> 58.4, 0.15 -> 57.6, 0.20 -> 55.4, and
# 1/sqrt(13) -> 29.6 t2i; at 0.10 an image holds 4.5 words, and "green" exactly where a green shape is.
FROZEN_TEXT_THRESHOLD = 0.1


def build_optimizer(model, config: TrainConfig, total_steps: int):
    """AdamW with three groups (matrices with weight decay, the rest without, the temperature with its own
    lr) and a LambdaLR for linear warm-up then cosine decay [paper: Adam, lr 5e-4, cosine]."""
    decay, no_decay, temperature = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name == "log_logit_scale":
            temperature.append(p)
        elif p.ndim >= 2:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay, "lr": config.lr},
        {"params": no_decay, "weight_decay": 0.0, "lr": config.lr},
        {"params": temperature, "weight_decay": 0.0, "lr": config.temperature_lr_value},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]])

    def factor(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if not config.cosine:
            return 1.0
        span = max(1, total_steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ------------------------------------------------------------------------------------------ the loop
def _check_out(config: TrainConfig, out: Path) -> None:
    """Refuse an ``--out`` that would lose a model or a resumable run (nothing is created here)."""
    if config.resume:
        if not (out / STATE_JSON).is_file():
            raise UsageError(
                f"--resume: {out} holds no training state ({STATE_JSON}); start without --resume"
            )
        return
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    if (out / STATE_JSON).is_file():
        raise UsageError(
            f"{out} already holds a training run: pass --resume to continue it, or choose another --out"
        )
    if (out / MODEL_CONFIG).is_file():
        raise UsageError(f"{out} already holds a model: choose another --out (or fine-tune it with --init)")
    # A log without a checkpoint is a run that stopped before its first one: nothing to keep, start over.


class _Log:
    """train_log.jsonl, appended by rank 0 only."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        """Drop lines of steps after ``step`` (written after the last checkpoint of an interrupted run)."""
        if not (self.enabled and self.path.is_file()):
            return
        keep = [
            ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step
        ]
        self.path.write_text("".join(ln + "\n" for ln in keep))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")


def train(
    config: TrainConfig,
    progress: Callable[[Progress], None] | None = None,
    started: float | None = None,
) -> TrainResult:
    """Train LexVLA as ``config`` says; returns when done, out of time, or at ``stop_at_step``.

    Works alone or under ``torchrun`` (every rank calls it; rank 0 writes). Raises UsageError / DataError /
    ModelError for bad input, before any base model is built where the data can tell. ``config.out`` holds
    a model (``config.json``, written last) only from the first checkpoint on, and ``max_minutes`` counts
    from ``started`` (``time.monotonic()``, default now: a command passes its own start), so it bounds the
    whole run: data checks, base pretraining, training, the last checkpoint and the final validation.
    """
    started = time.monotonic() if started is None else started
    config.validate()
    info = D.init_distributed(config.device)
    try:
        return _Trainer(config, info, progress, started).run()
    finally:
        D.cleanup(info)


class _Trainer:
    def __init__(self, config: TrainConfig, info: D.DistInfo, progress, started: float) -> None:
        self.info, self.progress = info, progress
        self.out = Path(config.out)
        if info.is_main:
            _check_out(config, self.out)
        D.barrier(info)
        if config.resume:
            # The run's own recipe, with what may change between invocations taken from this call.
            saved = TrainConfig.load(self.out)
            for name in (
                "max_minutes",
                "stop_at_step",
                "quiet",
                "num_workers",
                "device",
                "log_every",
                "val_every",
            ):
                setattr(saved, name, getattr(config, name))
            saved.resume = True
            config = saved
        self.config = config
        self.started = started
        budget = config.max_minutes * 60.0 if config.max_minutes > 0 else math.inf
        self.deadline = started + budget

        # Fail fast: what the data can tell is checked before any base model is built (minutes for the
        # tiny preset's LM): enough pairs for one batch, and every image of a caption folder decodes.
        self.pairs, self.val = load_data(config)
        steps = steps_per_epoch(self.pairs, config, info)
        t0 = time.monotonic()
        checked = check_images(self.pairs) + check_images(self.val)
        log.info("data checked: %d images decode (%.1f s)", checked, time.monotonic() - t0)
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if not config.resume:
                (self.out / LOG_FILE).unlink(missing_ok=True)  # of a run that never checkpointed
        D.barrier(info)
        dtype = (
            torch.bfloat16 if info.device.type == "cuda" else torch.float32
        )  # frozen bases in bf16 on GPUs
        from lexsearch.model.checkpoint import load_checkpoint
        from lexsearch.train.bases import initial_model

        if config.resume:
            self.model, self.root = load_checkpoint(self.out, dtype=dtype), self.out
        else:
            bases_deadline = started + BASES_SHARE * budget if math.isfinite(budget) else None
            t0 = time.monotonic()
            self.model, self.root = initial_model(
                config,
                self.pairs,
                self.out,
                dtype,
                info.is_main,
                lambda: D.barrier(info),
                bases_deadline,
            )
            log.info("initial model ready (%.1f s)", time.monotonic() - t0)
        from lexsearch.train.words import CaptionWords

        self.words = CaptionWords.start(self.model, self.pairs, config.init)
        from lexsearch.train.config import resolve_freeze_text

        frozen = resolve_freeze_text(config.preset, config.freeze_text, config.device)
        self.text = self._frozen_text() if frozen else None
        for p in self.model.parameters():
            if p.requires_grad:
                p.data = p.data.float()  # trainable weights and Adam moments in float32, always
        self.model.to(info.device).train()
        if config.grad_checkpointing:
            self.model.lm.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        towers = Towers(self.model) if self.text is None else self._frozen_towers()
        self.towers = D.wrap_ddp(towers, info)
        self.batches = Batches(self.pairs, config, info, self.model.config, steps)
        if config.cache_backbone:
            t0 = time.monotonic()
            tokens = backbone_tokens(
                self.model,
                self.pairs,
                info.device,
                config.val_batch_size,
                config.num_workers,
                config.cache_backbone_gb,
                # A cache that would take more than a quarter of the time left is not worth its saving.
                max_seconds=CACHE_SHARE * (self.deadline - t0),
            )
            if tokens is not None:
                self.batches.use_backbone_tokens(tokens)
            log.info("backbone tokens (%.1f s)", time.monotonic() - t0)
        if config.max_steps > 0:
            self.total_steps = config.max_steps
        else:
            self.total_steps = max(1, math.ceil(config.epochs * self.batches.steps_per_epoch))
        self.optimizer, self.scheduler = build_optimizer(self.model, config, self.total_steps)
        self.log = _Log(self.out / LOG_FILE, info.is_main)
        self.step, self.elapsed_before = 0, 0.0
        if config.resume:
            self._restore()
        else:
            torch.manual_seed(config.seed + info.rank)  # dropout differs across ranks, reproducibly
            if info.is_main:
                config.save(self.out)

    def _frozen_text(self):
        """The cached text vectors of every training caption; restricts the image read-out to their words."""
        from lexsearch.train.frozen_text import FrozenText

        if not hasattr(self.pairs, "captions"):
            raise UsageError("--freeze-text needs a caption folder (its captions are cached before training)")
        # The LM (LoRA included) is never run in a step, so it gets no gradient and keeps its weights.
        # A resumed model already records (and reads out on) its columns.
        columns = self.model.config.image_columns if self.config.resume else None
        words = self.model.config.caption_words  # recorded from the caption folder before this
        text = FrozenText(self.model, list(self.pairs.captions), self.config.text_top_k, columns, words=words)
        self.model.set_image_columns(text.columns.tolist())
        # A top-256 cut keeps every one of a few dozen columns, and an image that holds every word at some
        # weight matches every -word: the threshold rule, at a cut-off measured for such a read-out.
        self.model.config.sparsify = "threshold"
        self.model.config.threshold = FROZEN_TEXT_THRESHOLD
        share = (
            ""
            if text.share is None
            else f" (they hold {100 * text.share:.1f}% of the captions' squared L2 mass)"
        )
        log.info(
            "frozen text: %d captions (%d through the LM now), read-out on %d of %d words%s",
            len(text.index),
            text.computed,
            len(text.columns),
            self.model.vocab_size,
            share,
        )
        return text

    def _frozen_towers(self):
        from lexsearch.train.frozen_text import FrozenTowers

        return FrozenTowers(self.model, self.text).to(self.info.device)

    # ---------------------------------------------------------------------------------------- state
    def _rng(self) -> dict[str, list[torch.Tensor]]:
        states = {"cpu": D.gather_bytes(torch.get_rng_state(), self.info)}
        if self.info.device.type == "cuda":
            states["cuda"] = D.gather_bytes(torch.cuda.get_rng_state(self.info.device), self.info)
        return states

    def save(self) -> None:
        """Model checkpoint, then the resume state (all ranks join the RNG gather; rank 0 writes)."""
        from lexsearch.model.checkpoint import save_checkpoint
        from lexsearch.model.config import fingerprint

        self.words.record(self.info)  # the captions' words so far, into the checkpoint's config
        rng = self._rng()
        if self.info.is_main:
            save_checkpoint(self.model, self.out, root=self.root)
            extra = {
                "model_fingerprint": fingerprint(self.out),
                "world_size": self.info.world_size,
                "elapsed_s": self.elapsed_before + time.monotonic() - self.started,
                "total_steps": self.total_steps,
            }
            save_state(self.out, self.optimizer, self.scheduler, self.step, rng, extra)
        D.barrier(self.info)

    def _restore(self) -> None:
        from lexsearch.model.config import fingerprint

        meta, rng = load_state(self.out, self.optimizer, self.scheduler)
        if meta.get("model_fingerprint") != fingerprint(self.out):
            raise UsageError(
                f"{self.out}: the model and the training state are from different steps (interrupted while "
                "saving?); cannot resume exactly"
            )
        if meta.get("world_size") != self.info.world_size:
            log.warning(
                "resuming on %d ranks a run saved on %s: data order and RNG differ",
                self.info.world_size,
                meta.get("world_size"),
            )
        self.step = int(meta["step"])
        self.elapsed_before = float(meta.get("elapsed_s", 0.0))
        for kind, states in rng.items():
            state = states[self.info.rank] if self.info.rank < len(states) else states[0]
            if kind == "cpu":
                torch.set_rng_state(state)
            elif self.info.device.type == "cuda":
                torch.cuda.set_rng_state(state, self.info.device)
        self.log.truncate_after(self.step)

    # ---------------------------------------------------------------------------------------- loop
    def _validate(self, final: bool = False, images: int | None = None) -> dict | None:
        """Validation on the held-out pairs (their first ``images`` images when given), logged."""
        val = None
        if self.info.is_main:
            pairs = self.val
            if images is not None and images < len(pairs.images):
                pairs = pairs.subset_images(list(range(images)))
            val = validate(self.model, pairs, self.info.device, self.config.val_batch_size)
            if final:  # on a toy world: do the words mean something? (explanations, PatchDis, controls)
                from lexsearch.eval.toy import toy_validation

                toy = toy_validation(self.model, pairs, self.info.device, seed=self.config.seed)
                if toy is not None:
                    val["toy"] = toy
            self.log.write({"step": self.step, "val": val})
        D.barrier(self.info)
        return val

    def _final_plan(self) -> tuple[int, float]:
        """(held-out images the final validation uses, its estimated seconds) under ``max_minutes``.

        The estimate is measured: the final validation's own code on a few held-out images, timed. It gets
        at most FINAL_SHARE of the budget (nor more than is left), on fewer held-out images when all of them
        would not fit, and never fewer than the probe's.
        """
        n = len(self.val.images)
        if not (math.isfinite(self.deadline) and self.info.is_main):
            return n, 0.0
        from lexsearch.eval.toy import toy_validation

        def timed(k: int) -> float:
            probe = self.val.subset_images(list(range(k)))
            t0 = time.monotonic()
            validate(self.model, probe, self.info.device, self.config.val_batch_size)
            toy_validation(self.model, probe, self.info.device, seed=self.config.seed)
            return time.monotonic() - t0

        # Two sizes separate the fixed costs (the toy queries, PatchDis' set-up) from the per-image ones:
        # one size spread the fixed costs over every image and, at 500 held-out images, reserved ~4x the
        # final validation's real time.
        small, large = min(PROBE_IMAGES // 2, n), min(PROBE_IMAGES, n)
        t_small, t_large = timed(small), timed(large)
        per_image = (t_large - t_small) / (large - small) if large > small else t_large / large
        per_image = max(per_image, 0.25 * t_large / large)  # timing noise must not make images free
        fixed = max(0.0, t_large - large * per_image)
        budget = self.config.max_minutes * 60.0
        room = min(FINAL_SHARE * budget, self.deadline - time.monotonic()) - fixed
        fit = max(large, int(room / per_image))
        if fit < n:
            log.info("final validation on %d of %d held-out images, to end within --max-minutes", fit, n)
        n = min(n, fit)
        log.info("final validation of %d images estimated at %.1f s", n, fixed + n * per_image)
        return n, fixed + n * per_image

    def run(self) -> TrainResult:
        config, info = self.config, self.info
        final_images, final_s = self._final_plan()
        stop_at = config.stop_at_step if config.stop_at_step > 0 else self.total_steps
        vocab = self.model.vocab_size
        t0, first_step, stats, stopped, paused, val = time.monotonic(), self.step, None, False, False, None
        step_began, save_s = t0, 0.0
        periodic_s = final_s * len(self.val.images) / max(final_images, 1)  # all held-out images, no toy
        margin = SAFETY_SHARE * config.max_minutes * 60.0  # 0 without a budget
        data = self.batches.iterate(self.step)
        while self.step < self.total_steps:
            epoch, pixels, captions = next(data)
            self.words.see(captions)
            if self.text is None:
                ids, mask = self.model.tokenize(captions)
            else:  # cached text: each caption's row in the table
                ids = self.text.rows(captions)[:, None]
                mask = torch.ones_like(ids)
            self.optimizer.zero_grad(set_to_none=True)
            stats = train_step(
                self.towers,
                pixels.to(info.device),
                ids.to(info.device),
                mask.to(info.device),
                self.step,
                config,
                info,
                vocab,
            )
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(
                    [p for p in self.model.parameters() if p.requires_grad], config.grad_clip
                )
            self.optimizer.step()
            self.scheduler.step()
            with torch.no_grad():  # as CLIP: keep the parameter itself within [1, max scale]
                self.model.log_logit_scale.clamp_(0.0, math.log(self.model.config.max_logit_scale))
            self.step += 1
            rate = (self.step - first_step) / max(time.monotonic() - t0, 1e-9)
            lr = self.optimizer.param_groups[0]["lr"]
            if self.step % max(1, config.log_every) == 0 or self.step == self.total_steps:
                record = {
                    "step": self.step,
                    "epoch": epoch,
                    **asdict(stats),
                    "temperature": 1.0 / stats.logit_scale,
                    "lr": lr,
                    "steps_per_s": rate,
                }
                self.log.write(record)
            if self.progress is not None and info.is_main:
                self.progress(Progress(self.step, self.total_steps, epoch, stats.loss, lr, rate))
            done = self.step >= self.total_steps
            now = time.monotonic()
            step_s = now - step_began
            step_began = now
            # What must still fit before the deadline: one more step, the last checkpoint (as long as the
            # last one took), the final validation (measured by _final_plan).
            left = self.deadline - margin - now - final_s - step_s - save_s
            if config.val_every and self.step % config.val_every == 0 and not done and left > periodic_s:
                self._validate()  # skipped when it would eat into what the end of the run needs
                now = time.monotonic()
                left = self.deadline - margin - now - final_s - step_s - save_s
                step_began = now
            epoch_end = self.batches.steps_per_epoch and self.step % self.batches.steps_per_epoch == 0
            timeout = D.any_rank(left < 0, info)
            if timeout or self.step >= stop_at:
                stopped = not done
                paused = not done and not timeout  # stop_at_step: a pause to be resumed, no validation
                break
            if not done and (
                (config.save_every and self.step % config.save_every == 0)
                or (not config.save_every and epoch_end)
            ):
                t_save = time.monotonic()
                self.save()
                save_s = time.monotonic() - t_save
                step_began = time.monotonic()
        t_end = time.monotonic()
        self.words.measure(self.val, info)  # how sure the model is of its own images' words (explain)
        self.save()
        if not paused:
            val = self._validate(final=True, images=final_images)
        log.info("final checkpoint and validation (%.1f s)", time.monotonic() - t_end)
        minutes = (self.elapsed_before + time.monotonic() - self.started) / 60.0
        rate = (self.step - first_step) / max(time.monotonic() - t0, 1e-9)
        log.info("stopped at step %d/%d after %.1f min", self.step, self.total_steps, minutes)
        return TrainResult(
            out=self.out,
            step=self.step,
            total_steps=self.total_steps,
            stopped_early=stopped,
            loss=stats.loss if stats else float("nan"),
            steps_per_s=rate,
            minutes=minutes,
            val=val,
        )
