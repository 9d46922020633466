"""The LexVLA architecture as a dataclass: one field per choice, with the paper's value or ours (and why).

Tags as in LEXVLA.md: [paper] stated in the paper, [choice] our default where the paper is silent.
A config round-trips through JSON and is stored with every checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lexsearch.config import from_dict
from lexsearch.errors import ModelError

# A checkpoint folder (see lexsearch.model.checkpoint): these two files plus, for local bases, base/.
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "lexvla.safetensors"
FORMAT_VERSION = 1

# The in-context prompt, verbatim from the paper. "[TEXT]" is replaced by the caption or query.
PAPER_PROMPT = (
    'The focus of "The man is riding a white horse." lies on important words:"man", "riding", "white", '
    '"horse". The focus of "[TEXT]" lies on important words:'
)


@dataclass
class ModelConfig:
    # --- vision tower -------------------------------------------------------------------------------------
    vision_type: str = "dinov2"  # "dinov2" | "clip": which transformers class loads `vision_model`
    vision_model: str = "facebook/dinov2-base"  # [paper] hub id, or a local path (relative = to checkpoint)
    image_size: int = 224  # [choice] the paper does not publish its resolution
    # Normalisation the backbone was pretrained with (ImageNet for DINOv2; CLIP has its own).
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # --- adapter: one pre-LN self-attention block at backbone width, then MLP -> LM width [paper: ~17M] ---
    adapter_heads: int = 12
    adapter_mlp_ratio: float = 4.0
    adapter_hidden: int = 2048  # [choice] width of the projection MLP (768 -> 2048 -> 4096)
    # --- text tower ---------------------------------------------------------------------------------------
    lm_model: str = "meta-llama/Llama-2-7b-hf"  # [paper] hub id or local path of a causal LM
    tokenizer: str = ""  # "" = the LM's own tokenizer
    prompt: str = PAPER_PROMPT  # [paper]
    # Appended after the prompt. The paper's prompt ends at `words:`; where the tokenizer splits `:"`,
    # the next token the LM predicts is the quote, not a content word, so `"` can be a better read-out.
    prompt_end: str = ""  # [paper] "" ; tiny preset uses '"'
    lora_r: int = 8  # [choice] r=8 on all linear projections = 20.0M params = 0.297% of Llama-2-7B
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    max_text_tokens: int = 64  # caption tokens after the prompt prefix (longer captions are cut)
    # [choice] weight a of the read-out calibrated against the prompt with an empty text: s_txt =
    # L2norm(elu1p(l - a * l_empty)), l_empty the next-token logits of the same prompt around "" (one more row
    # in every batch, through the same LM and LoRA). 0 = the paper's read-out. A real LLM puts the words it
    # says after any such prompt (`the`, `a`, the demonstration's `man`) on top of every text; subtracting
    # what it says for no text removes them (bench/gemma_readout.py).
    text_calibration: float = 0.0
    # [choice] rank of a trainable low-rank correction of the LM's final state before the read-out, h + U D h
    # (U zero-initialised, so an untrained model reads out exactly the LM's logits); 0 = none (the paper).
    # It is the text side's trainable part when the LM is frozen (a CPU run of mini): LoRA on the output of
    # the last layer, at the read-out position only, so training can run on cached states
    # (lexsearch.train.frozen_text). Frozen Gemma states of distinct toy captions read out to vectors with a
    # mean cosine of 0.95; nothing on the image side can separate what the text side does not.
    text_head_rank: int = 0
    # --- vocabulary ---------------------------------------------------------------------------------------
    # Kept tokenizer ids (the columns of every vector). Filled by the vocabulary filter at build time.
    vocab_ids: list[int] = field(default_factory=list)
    # [choice] which pieces the filter keeps (lexsearch.model.vocab): "ascii-lower" (17,234 of Llama 2's 32,000,
    # the paper keeps 17,149; 17,549 of Mistral's; 87,784 of Gemma 3's 262,144) | "latin" (the rule before,
    # 25,861 / 25,961 / 158,724; bench/vocab_counts.py)
    vocab_filter: str = "ascii-lower"
    # What training taught: the distinct words (lower case, letters only) of the captions the model was
    # trained on, sorted. A query word outside them gets a note, and prompt words outside them are masked
    # out of every vector (lexsearch.model.vocab). Empty = not recorded (checkpoints written before the
    # record, untrained ones): then no word is flagged and nothing is masked.
    caption_words: list[str] = field(default_factory=list)
    # How far the strongest word of the model's own held-out images stands out (LexVLA.word_margin), as
    # percentiles {"p0": .., "p1": .., "p5": .., "p50": .., "n": images}, measured at the end of training.
    # explain calls an image's words weak below the line lexsearch.explain.WEAK_PERCENTILE. Empty = not
    # measured: no caveat.
    word_margins: dict[str, float] = field(default_factory=dict)
    # Vocabulary columns the image read-out computes, sorted; empty = all. A run with a frozen text tower
    # (TrainConfig.freeze_text) sets it to the union of its captions' top words: every other column of an
    # image vector is then 0, so a query word outside it can never score (lexsearch.train.frozen_text).
    # Z_img holds only these rows, and a text vector is read out on them too (a word no image can hold adds
    # nothing to a score, so the ranking of images is unchanged; the text vector is normalised on them).
    image_columns: list[int] = field(default_factory=list)
    # --- sparsification at inference [paper] ----------------------------------------------------------------
    sparsify: str = "threshold"  # "threshold" (> 1/sqrt(V)) | "topk" | "none"
    top_k: int = 512  # used when sparsify == "topk" ("Q(512)")
    # The threshold rule's cut-off; 0 = 1/sqrt(V) [paper]. A frozen-text run, whose read-out covers a few
    # dozen words, records its own (train.loop.FROZEN_TEXT_THRESHOLD): at 1/sqrt(13) = 0.28 a query kept ~3
    # words and R@1 fell from 58 to 30; at 0.1 an image keeps ~4.5 and R@1 stays (docs/toy-results.md 4).
    threshold: float = 0.0
    # --- optional dense heads (beyond the paper): 0 turns them off ------------------------------------------
    dense_dim: int = 0
    # [choice] False: the dense heads learn on detached features, so their InfoNCE never changes the adapter,
    # Z_img or LoRA (the lexical model stays the paper's). True lets it shape them too (see README).
    dense_backprop: bool = False
    # --- temperature [paper]: init 0.07, logit scale clamped at 100 (as CLIP) -------------------------------
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    # --- bookkeeping --------------------------------------------------------------------------------------
    preset: str = "custom"
    # Tiny presets build their bases from these configs instead of loading weights (see lexsearch/tiny/builder.py).
    vision_config: dict[str, Any] = field(default_factory=dict)
    lm_config: dict[str, Any] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab_ids)

    def prompt_parts(self) -> tuple[str, str]:
        """The prompt around the text: (prefix, suffix). The prefix is shared by every text in a batch."""
        if "[TEXT]" not in self.prompt:
            raise ValueError("prompt must contain [TEXT]")
        prefix, suffix = self.prompt.split("[TEXT]", 1)
        return prefix, suffix + self.prompt_end

    def __post_init__(self) -> None:
        # JSON turns tuples into lists; keep the declared types so configs compare equal after a round trip.
        self.image_mean = tuple(self.image_mean)
        self.image_std = tuple(self.image_std)
        self.lora_targets = tuple(self.lora_targets)
        self.vocab_ids = [int(i) for i in self.vocab_ids]
        self.image_columns = sorted({int(i) for i in self.image_columns})
        self.caption_words = sorted({str(w) for w in self.caption_words})


def read_config(model_dir: Path) -> ModelConfig:
    """The ModelConfig of a checkpoint folder, or a ModelError saying what is wrong with it."""
    path = Path(model_dir) / CONFIG_FILE
    if not Path(model_dir).is_dir():
        raise ModelError(f"model folder not found: {model_dir}")
    if not path.is_file():
        # config.json is the last file a checkpoint writes: without it a training run's folder holds bases
        # and logs, never a model to index with.
        if (Path(model_dir) / "train_config.json").is_file():
            raise ModelError(
                f"{model_dir} holds no model yet: its training run has not written a checkpoint (still "
                "running, or it stopped before its first one; train again with the same --out)"
            )
        raise ModelError(
            f"{model_dir} is not a lexsearch model (no {CONFIG_FILE}); train one with 'lexsearch train'"
        )
    if not (Path(model_dir) / WEIGHTS_FILE).is_file():
        raise ModelError(f"{model_dir} is not a complete model: it has {CONFIG_FILE} but no {WEIGHTS_FILE}")
    try:
        payload = json.loads(path.read_text())
        return from_dict(ModelConfig, payload["model"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path} is not a valid lexsearch model config: {exc}") from exc


def fingerprint(model_dir: Path) -> str:
    """A stable id of a checkpoint: hash of its config and trained weights (what an index records)."""
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        with open(Path(model_dir) / name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def resolve_base(name: str, root: Path | None) -> str:
    """A base model named in a config: a path relative to the checkpoint folder, else a hub id or a path."""
    if root is not None and not Path(name).is_absolute() and (Path(root) / name).exists():
        return str(Path(root) / name)
    return name


def lm_source(config: ModelConfig, root: Path | None) -> str:
    """What loads a checkpoint's text base: its hub id or folder, or for a ``.gguf`` base the folder it was
    converted into once (converting it now if this machine never did; lexsearch.model.gguf)."""
    from lexsearch.model.gguf import local_base

    return local_base(resolve_base(config.lm_model, root))


def tokenizer_source(config: ModelConfig, root: Path | None) -> str:
    """Where a checkpoint's tokenizer lives (its own ``tokenizer`` entry, else the LM's)."""
    if config.tokenizer:
        return resolve_base(config.tokenizer, root)
    return lm_source(config, root)
