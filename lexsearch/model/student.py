"""The student query encoder: a small transformer distilled from the LM text tower, run with numpy alone.

A new query through the LM means importing torch and transformers and running a causal LM over the whole
in-context prompt (seconds on a CPU). The student reads only the query's own tokenizer pieces and returns the
same kind of vector (non-negative, L2-normalised, one dimension per vocabulary word, sparsified like the
model), so the index, the scores and the explanations are unchanged. It is trained by
``lexsearch.train.distill``; this module is its torch-free runtime.

    x    = [CLS; E[pieces]] + P[positions]                      (1 + L, d)
    x    = x + MHA(LN(x));  x = x + MLP(LN(x))                  pre-LN blocks, bidirectional, GELU (tanh)
    c    = LN_f(x[0])                                           (d,)
    s    = L2norm(elu1p(c @ W_out^T + b_out) * keep)            (C,)  W_out = Z_txt[cols] M @ P folded at export
                                                                      (zero on the V - C other columns)
    dense = L2norm(c @ W_dense^T + b_dense)                     (D,)  when the model has a dense head

Why numpy rather than ONNX Runtime: at these sizes the whole encode is a few small matrix products, and
``bench/query_cold.py`` measures that importing onnxruntime alone costs more than numpy's import + load +
encode together (see docs/student.md); numpy and the ``tokenizers`` library are already dependencies.

Files in the model folder: ``student.safetensors`` (float32 arrays, no pickle) and ``student.json``
(architecture, the fingerprint of the model it was distilled from, the distillation record).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lexsearch.errors import ModelError
from lexsearch.model.vectors import Encoded, parse_sparsify, sparsify_array

logger = logging.getLogger(__name__)

STUDENT_WEIGHTS = "student.safetensors"
STUDENT_CONFIG = "student.json"
STUDENT_FORMAT = 1
LN_EPS = 1e-5


@dataclass
class StudentConfig:
    """The student's architecture (what ``student.json`` records under ``arch``)."""

    n_tokens: int = 0  # size of the tokenizer's id space (the input embedding rows)
    vocab_size: int = 0  # V: output dimensions, the model's kept vocabulary
    width: int = 128  # d
    layers: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    max_tokens: int = 32  # query pieces read (longer queries are cut, like the LM's max_text_tokens)
    dense_dim: int = 0  # D of the model's dense text head, 0 when it has none


# The quality check a student must pass before ``auto`` answers queries with it, measured at the end of the
# distillation on held-out texts, student vs the LM (``lexsearch.train.distill.agreement``):
#   cosine: mean cosine of the lexical vectors;
#   words:  mean share of the LM's top-3 words that are also among the student's top 3 (what explanations show);
#   top1:   share of texts whose top-ranked bank vector (images, as a query ranks them) scores, by the LM,
#           at least as high as the LM's own 10th (the student's first answer is one the LM would show).
# The thresholds come from students of the demo's model stopped after 5-200 steps (docs/student.md): those
# at 30 steps or fewer (cosine <= 0.86, top result <= 0.62) got 9 or more of 36 queries wrong, those at 40 or
# more (cosine >= 0.90, words >= 0.70, top result >= 0.80) answered exactly as right as the LM.
GATE: dict[str, float] = {"cosine": 0.9, "words": 0.68, "top1": 0.75}
GATE_NAMES = {"cosine": "cosine", "words": "top-3 words", "top1": "top result"}


def gate_figures(figures: dict[str, Any], required: dict[str, float] | None = None) -> str:
    """One line of held-out agreement figures, each against what the gate requires."""
    required = GATE if required is None else required
    parts = []
    for key, name in GATE_NAMES.items():
        value = figures.get(key)
        if value is None:
            continue
        need = required.get(key)
        parts.append(f"{name} {value:.2f}" + (f" (needs {need:.2f})" if need is not None else ""))
    return ", ".join(parts) or "not measured"


def passes(figures: dict[str, Any], required: dict[str, float] | None = None) -> bool:
    """Whether held-out figures reach every threshold (a figure not measured, e.g. top1 without a bank,
    is not required); no figures at all never pass."""
    required = GATE if required is None else required
    measured = [k for k in required if figures.get(k) is not None]
    return bool(measured) and "cosine" in measured and all(float(figures[k]) >= required[k] for k in measured)


def gate_verdict(record: dict[str, Any]) -> tuple[bool, str]:
    """(passed, why) from a ``student.json`` record: the verdict the distillation recorded, not recomputed."""
    gate = (record.get("distill") or {}).get("gate")
    if not isinstance(gate, dict) or "passed" not in gate:
        return False, "it was distilled before students were checked against the LM"
    figures = gate_figures(gate.get("figures", {}), gate.get("required"))
    if gate["passed"]:
        return True, f"held-out agreement with the LM: {figures}"
    return False, f"it failed its quality check (held-out agreement with the LM: {figures})"


def student_exists(model_dir: str | Path) -> bool:
    return (Path(model_dir) / STUDENT_CONFIG).is_file() and (Path(model_dir) / STUDENT_WEIGHTS).is_file()


def read_student_record(model_dir: str | Path) -> dict[str, Any]:
    """The parsed ``student.json`` of a model folder, or a ModelError."""
    path = Path(model_dir) / STUDENT_CONFIG
    try:
        record = json.loads(path.read_text())
        if int(record.get("format", 0)) != STUDENT_FORMAT:
            raise ValueError(f"format {record.get('format')!r}, expected {STUDENT_FORMAT}")
        StudentConfig(**record["arch"])
        return record
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path} is not a valid student encoder: {exc}") from exc


def token_ids(backend: Any, texts: list[str], max_tokens: int) -> list[list[int]]:
    """The pieces the student reads: the text alone, no special tokens, cut to ``max_tokens``.

    One function for distillation and for queries, so both see exactly the same ids."""
    encodings = backend.encode_batch(list(texts), add_special_tokens=False)
    return [e.ids[:max_tokens] for e in encodings]


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + LN_EPS) * w + b


def _gelu(x: np.ndarray) -> np.ndarray:
    # The tanh form, as the torch student uses (nn.GELU(approximate="tanh")): numpy has no erf.
    return 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x**3)))


def _elu1p(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, x + 1.0, np.exp(np.minimum(x, 0.0)))


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class StudentEncoder:
    """A loaded student: ``encode_texts`` with the ``Encoder``'s signature, numpy only."""

    def __init__(
        self, arch: StudentConfig, weights: dict[str, np.ndarray], backend: Any, record: dict
    ) -> None:
        self.arch = arch
        # The vocabulary columns of the output rows (the model's read-out columns), or None: all V, in order.
        columns = weights.get("out.columns")
        self.columns = None if columns is None else np.asarray(columns, dtype=np.int64)
        self.w = {
            k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items() if k != "out.columns"
        }
        self.backend = backend  # tokenizers.Tokenizer
        self.record = record
        self.teacher_id = str(record.get("teacher_model_id", ""))
        self.sparsify = str(record.get("sparsify", "threshold"))
        self.top_k = int(record.get("top_k", 512))
        self.threshold = float(record.get("threshold", 0.0))  # the model's own cut-off; 0 = 1/sqrt(V)
        self.vocab_size = arch.vocab_size
        self.dense_dim = arch.dense_dim
        # Identifies this student's vectors in a query cache (LM vectors and student vectors never mix).
        self.id = str(record.get("id", ""))
        # (V,) 0 for the columns the model masks (its prompt-only words), set by the loader; None = none.
        self.keep: np.ndarray | None = None

    @classmethod
    def load(cls, model_dir: str | Path, backend: Any) -> StudentEncoder:
        from safetensors.numpy import load_file

        record = read_student_record(model_dir)
        arch = StudentConfig(**record["arch"])
        try:
            weights = load_file(str(Path(model_dir) / STUDENT_WEIGHTS))
        except Exception as exc:  # safetensors raises its own error types for a damaged file
            raise ModelError(f"cannot read {Path(model_dir) / STUDENT_WEIGHTS}: {exc}") from exc
        return cls(arch, weights, backend, record)

    # ------------------------------------------------------------------------------------------ forward
    def _forward(self, ids: list[int]) -> np.ndarray:
        """The CLS read-out c (d,) of one query's pieces."""
        a, w = self.arch, self.w
        x = np.concatenate([w["cls"][None], w["tok_emb"][ids]], axis=0) + w["pos_emb"][: len(ids) + 1]
        n, d = x.shape
        hd = d // a.heads
        for i in range(a.layers):
            p = f"layers.{i}."
            h = _layer_norm(x, w[p + "ln1.weight"], w[p + "ln1.bias"])
            qkv = h @ w[p + "qkv.weight"].T + w[p + "qkv.bias"]  # (n, 3d)
            q, k, v = (
                qkv[:, j * d : (j + 1) * d].reshape(n, a.heads, hd).transpose(1, 0, 2) for j in range(3)
            )
            att = q @ k.transpose(0, 2, 1) / math.sqrt(hd)  # (heads, n, n)
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            o = (att @ v).transpose(1, 0, 2).reshape(n, d)
            x = x + o @ w[p + "proj.weight"].T + w[p + "proj.bias"]
            h = _layer_norm(x, w[p + "ln2.weight"], w[p + "ln2.bias"])
            h = _gelu(h @ w[p + "fc1.weight"].T + w[p + "fc1.bias"])
            x = x + h @ w[p + "fc2.weight"].T + w[p + "fc2.bias"]
        return _layer_norm(x[0], w["ln_f.weight"], w["ln_f.bias"])

    def raw(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """Dense lexical vectors (n, V) before sparsification, and dense vectors (n, D) or None."""
        ids = token_ids(self.backend, texts, self.arch.max_tokens)
        c = (
            np.stack([self._forward(row) for row in ids])
            if ids
            else np.zeros((0, self.arch.width), np.float32)
        )
        s = self.lexical(c @ self.w["out.weight"].T + self.w["out.bias"])
        dense = None
        if self.arch.dense_dim:
            dense = _normalize(c @ self.w["dense.weight"].T + self.w["dense.bias"]).astype(np.float32)
        return s.astype(np.float32), dense

    def lexical(self, logits: np.ndarray) -> np.ndarray:
        """Output-layer logits (n, C) -> lexical vectors (n, V): elu1p, placed on the output's columns (the
        others stay absent: zero, not elu1p(0) = 1), masked, L2-normalised."""
        s = _elu1p(logits)
        if self.columns is not None:
            full = np.zeros((s.shape[0], self.vocab_size), s.dtype)
            full[:, self.columns] = s
            s = full
        return _normalize(s if self.keep is None else s * self.keep)

    def encode_texts(self, texts, batch_size: int = 32, sparsify: str | tuple | None = None) -> Encoded:
        """Texts -> ``Encoded`` (sparse (n, V) CSR, dense (n, D) or None), sparsified like the model."""
        mode, k = parse_sparsify(sparsify, self.sparsify, self.top_k)
        s, dense = self.raw(list(texts))
        return Encoded(sparsify_array(s, mode, k, self.threshold), dense)


@dataclass
class StudentRecord:
    """What ``student.json`` holds besides the architecture (written by the distillation)."""

    teacher_model_id: str
    sparsify: str
    top_k: int
    id: str = ""
    threshold: float = 0.0  # the model's ModelConfig.threshold
    distill: dict[str, Any] = field(default_factory=dict)
    # The words (lexsearch.model.vocab.text_words) of the captions it was trained on: under ``auto`` a query
    # with any other word goes to the LM (lexsearch.model.lazy.LazyEncoder.route).
    words: list[str] = field(default_factory=list)

    def to_json(self, arch: StudentConfig) -> str:
        payload = {"format": STUDENT_FORMAT, "arch": asdict(arch), **asdict(self)}
        return json.dumps(payload, indent=2, sort_keys=True)
