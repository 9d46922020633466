"""The training recipe as a dataclass: one field per knob, with the paper's value or ours (and why).

Tags as in LEXVLA.md: [paper] stated in the paper, [choice] our default where the paper is silent. The
``paper`` preset keeps every paper value; ``tiny`` changes what a few-minute CPU run on the toy world needs.
The config used is saved as ``train_config.json`` in ``--out`` and read back by ``--resume``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

from lexsearch.config import from_dict, load_json, save_json
from lexsearch.errors import UsageError

CONFIG_FILE = "train_config.json"
PAPER_VOCAB_SIZE = 17149  # V of the paper's filtered Llama-2 vocabulary: the lambdas were set for it
REGULARISERS = ("overuse", "flops")
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass
class TrainConfig:
    # --- data and output ----------------------------------------------------------------------------------
    # caption folder (captions.jsonl / .csv), WebDataset shards (brace pattern or folder), or a COCO captions /
    # Karpathy split .json file (lexsearch.data.coco)
    data: str = ""
    images: str = ""  # image folder of a .json `data` ("" = the usual place beside it)
    split: str = "train"  # split of a Karpathy `data` file ("train+restval" joins two)
    val_data: str = ""  # caption folder for validation; "" = hold out part of `data`
    val_holdout: float = 0.1  # [choice] images held out when val_data is "": a fraction, or a count if >= 1
    val_max_images: int = 500  # [choice] cap on held-out images, so validation stays cheap on big data
    out: str = ""  # the checkpoint folder written (model, train_log.jsonl, train_config.json, resume state)
    # --- model --------------------------------------------------------------------------------------------
    preset: str = "tiny"  # tiny | mini | small | paper (see lexsearch.model.presets)
    init: str = ""  # a checkpoint folder to fine-tune from; "" = a fresh model of the preset
    # --- schedule -----------------------------------------------------------------------------------------
    epochs: float = 12.0  # [paper] 12 epochs over CC-12M
    max_steps: int = 0  # 0 = epochs x steps per epoch; needed for remote shards whose size is unknown
    max_minutes: float = 0.0  # 0 = no limit; otherwise stop cleanly (with a checkpoint) after this long
    # Stop cleanly (with a checkpoint) once this many steps are done; 0 = run to the end. The schedule still
    # spans the whole run, so a later --resume continues the same curve (e.g. a run cut into job slots).
    stop_at_step: int = 0
    batch_size: int = 6144  # [paper] the global batch over all ranks (InfoNCE negatives)
    micro_batch_size: int = 0  # per-rank forward size; 0 = the whole per-rank batch at once (no GradCache)
    # --- optimiser ----------------------------------------------------------------------------------------
    lr: float = 5e-4  # [paper] Adam
    temperature_lr: float | None = None  # [choice] None = lr; the prototype saw the temperature barely move
    weight_decay: float = 0.0  # [choice] the paper says Adam; decay (if any) only on matrices
    warmup_steps: int = 0  # [choice] linear warm-up; the paper mentions none
    cosine: bool = True  # [paper] cosine decay to min_lr_ratio x lr at the last step
    min_lr_ratio: float = 0.0
    grad_clip: float = 0.0  # [choice] 0 = off
    # --- objective ----------------------------------------------------------------------------------------
    reg: str = "overuse"  # [paper] overuse | flops (the Q(FLOPs) ablation)
    lambda_img: float = 5e-4  # [paper] lambda_I
    lambda_txt: float = 1e-3  # [paper] lambda_T
    ramp_steps: int = 2000  # [paper] quadratic ramp of the lambdas
    # The overuse penalty ranges over [1, V], so at a toy V of ~150 the paper's lambdas are ~100x weaker
    # relative to InfoNCE than at V = 17,149. True multiplies both lambdas by 17149 / V to keep the paper's
    # relative strength (off in the paper preset, where V = 17,149 and the factor is 1).
    scale_lambdas_by_vocab: bool = False
    dense_weight: float = 0.5  # [choice] weight of the dense heads' InfoNCE (beyond the paper); 0 = off
    dense_temperature: float = 0.05  # [choice] fixed: the learnable temperature belongs to the lexical loss
    # --- runtime ------------------------------------------------------------------------------------------
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | mps; under torchrun each rank takes cuda:LOCAL_RANK
    num_workers: int = 2  # DataLoader processes decoding images ahead of the model
    grad_checkpointing: bool = False  # checkpoint the LM's layers (prefix sharing is then off: see LexVLA)
    # [choice] Run the frozen backbone once per training image and train on its stored tokens. Exact (the
    # backbone is frozen and images are not augmented); only for caption folders whose tokens fit in
    # cache_backbone_gb of memory on the training device, else the run goes on without it (logged).
    cache_backbone: bool = False
    # Freeze the text tower and train the image side against each distinct caption's text vector, computed
    # once and cached on disk (lexsearch.train.frozen_text); the image read-out then covers only the words
    # those vectors activate. None = on for the mini preset on a CPU, off otherwise.
    freeze_text: bool | None = None
    # With a frozen text tower the read-out covers only some words (ModelConfig.image_columns): the content
    # words of the training captions, and, when text_top_k > 0, each caption's text_top_k strongest words
    # under the LM's read-out. Its cost is linear in their number.
    text_top_k: int = 0
    cache_backbone_gb: float = 4.0
    log_every: int = 10  # steps between train_log.jsonl lines
    val_every: int = 0  # steps between validations; 0 = only at the end
    save_every: int = 0  # steps between checkpoints; 0 = at each epoch's end and at the end
    val_batch_size: int = 64
    quiet: bool = False  # no progress bar (the CLI's concern; kept so the saved config says how it ran)
    resume: bool = False  # continue the run in `out` (model, optimiser, scheduler, step, RNG)

    # ------------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise UsageError for settings that cannot work, before anything heavy is loaded."""
        if not self.data:
            raise UsageError("no training data given (--data)")
        if not self.out:
            raise UsageError("no output folder given (--out)")
        for flag, where in (("--data", self.data), ("--val-data", self.val_data)):
            # Checked here, before the output folder is made: a typo must not leave an empty model behind.
            # Brace-expanded shard lists ('shards/{000..009}.tar') and URLs are left to the data loader.
            if where and "{" not in where and "://" not in where and not os.path.exists(where):
                raise UsageError(f"{flag} {where}: no such file or folder")
        if self.reg not in REGULARISERS:
            raise UsageError(f"unknown regulariser {self.reg!r}; choose one of {', '.join(REGULARISERS)}")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise UsageError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")
        if self.batch_size < 2:
            raise UsageError("--batch-size must be at least 2 (InfoNCE needs negatives)")
        if self.micro_batch_size < 0:
            raise UsageError("micro_batch_size must be >= 0")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise UsageError("--epochs must be positive")
        if self.lr <= 0 or (self.temperature_lr is not None and self.temperature_lr < 0):
            raise UsageError("learning rates must be positive")
        if self.max_minutes < 0:
            raise UsageError("--max-minutes must be >= 0")
        if self.val_holdout <= 0:
            raise UsageError("val_holdout must be positive")

    @property
    def temperature_lr_value(self) -> float:
        return self.lr if self.temperature_lr is None else self.temperature_lr

    def lambda_scale(self, vocab_size: int) -> float:
        """Factor applied to both lambdas: 17149 / V when ``scale_lambdas_by_vocab``, else 1."""
        return PAPER_VOCAB_SIZE / vocab_size if self.scale_lambdas_by_vocab else 1.0

    def save(self, out_dir: Path) -> Path:
        """Write ``train_config.json`` into ``out_dir`` (atomically)."""
        path = Path(out_dir) / CONFIG_FILE
        save_json(self, path)
        return path

    @classmethod
    def load(cls, out_dir: Path) -> TrainConfig:
        """The config saved in a run folder (unknown keys from other versions are ignored)."""
        path = Path(out_dir) / CONFIG_FILE
        if not path.is_file():
            raise UsageError(f"{out_dir} holds no {CONFIG_FILE}: nothing to resume")
        return from_dict(cls, load_json(path))


# Per-preset defaults for what the paper's values cannot mean at that scale. Everything else is the paper's.
PRESET_DEFAULTS: dict[str, dict] = {
    "paper": {
        "micro_batch_size": 96,
        "grad_checkpointing": True,
        "num_workers": 8,
        "log_every": 20,
        "val_every": 1000,
    },
    "small": {
        "batch_size": 1024,
        "micro_batch_size": 128,
        "grad_checkpointing": True,
        "num_workers": 8,
        "log_every": 20,
        "val_every": 1000,
    },
    # The tiny ViT + Gemma 3 270M with LoRA (model preset mini), on one GPU: small's batch shape.
    "mini": {
        "batch_size": 1024,
        "micro_batch_size": 128,
        "grad_checkpointing": True,
        "num_workers": 8,
        "log_every": 20,
        "val_every": 1000,
    },
    # A toy world of ~2,000 images: ~15 steps an epoch, so the ramp and logging are scaled to a few hundred
    # steps, and the lambdas to the tiny vocabulary (see scale_lambdas_by_vocab).
    # epochs 40 and a temperature LR of 0.02 (the scale 14 -> ~75) measured best on 2,000 / 500 toy images
    # (bench/toy_words.py); at the base LR the temperature barely moves and R@1 stays ~2-4%.
    # FLOPs instead of the paper's overuse penalty: at V ~ 130 overuse weights a word by how far above average
    # it is used, so a word no caption says (a function word on the image side) is pushed down ~4x more
    # weakly than under FLOPs and keeps a floor near the 1/sqrt(V) cut-off; with FLOPs no held-out image's
    # top-5 words hold a function word on either shapes world, at equal or better R@1 (docs/toy-results.md 0).
    "tiny": {
        "reg": "flops",
        "batch_size": 128,
        "cache_backbone": True,  # 2,000 images at 96 px: 111 MB; a step takes ~35% less time
        "epochs": 40.0,
        "temperature_lr": 0.02,
        "ramp_steps": 100,
        "scale_lambdas_by_vocab": True,
        "num_workers": 1,
        "log_every": 5,
        "val_every": 50,
        "val_batch_size": 128,
    },
}


# The mini preset with its text tower frozen (the default on a CPU): the image side trains alone, against
# cached text vectors, so the tiny preset's recipe for a toy world applies, at the batch a CPU step affords.
MINI_FROZEN_DEFAULTS: dict = {
    **PRESET_DEFAULTS["tiny"],
    "freeze_text": True,
    "val_every": 0,  # a validation runs Gemma on every held-out caption: only at the end
    # The read-out on the captions' own content words: with each caption's 32 strongest words under Gemma's
    # read-out as well (356 columns on the toy world), images lit up Gemma's neighbours of the caption words,
    # often in other languages (rojo, rosso, estrellas for a red circle or a yellow star); with the captions'
    # words alone an explanation is in the captions' language, and a query in other words still reaches
    # them through Gemma (docs/toy-results.md 4). 24 epochs fit the 15 minutes with the caption cache.
    "text_top_k": 0,
    "epochs": 24.0,
    "save_every": 200,  # Z_img is V x 640 (225 MB): not at every 16-step epoch
}


def resolve_freeze_text(preset: str, freeze_text: bool | None, device: str) -> bool:
    """Whether a run freezes its text tower: as asked, else for ``mini`` where it runs on a CPU."""
    if freeze_text is not None:
        return freeze_text
    if preset != "mini":
        return False
    if device == "cpu":
        return True
    if device != "auto":
        return False
    import torch

    return not (torch.cuda.is_available() or torch.backends.mps.is_available())


def train_config(preset: str = "tiny", **overrides) -> TrainConfig:
    """The TrainConfig of a preset with field overrides (``None`` values are ignored: "not given")."""
    if preset not in PRESET_DEFAULTS:
        raise UsageError(f"unknown preset {preset!r}; choose one of {', '.join(PRESET_DEFAULTS)}")
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UsageError(f"unknown training options: {', '.join(unknown)}")
    values = dict(PRESET_DEFAULTS[preset], preset=preset)
    if preset == "mini" and resolve_freeze_text(
        preset, overrides.get("freeze_text"), overrides.get("device") or "auto"
    ):
        values = dict(MINI_FROZEN_DEFAULTS, preset=preset)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return replace(TrainConfig(), **values)
