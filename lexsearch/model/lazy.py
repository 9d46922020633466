"""``LazyEncoder``: a model's vocabulary at once, its networks only when something must be encoded.

A query answered from the collection's query cache needs the vocabulary (words for explanations, pieces for
``+``/``-`` operators) but not the networks; loading those (torch, transformers, the weights) is what makes a
cold query slow. Nothing here imports torch.

It is also where a query's text encoder is chosen: the model's distilled student (``student.json`` in the
model folder, torch-free) or the LM text tower. ``auto`` takes the student when the model has one that was
distilled from these very weights and passed its quality check (the verdict its distillation recorded);
otherwise the LM, with a one-line note saying why (``LazyEncoder.note``; the CLI prints it). ``lm`` always
runs the LM; ``student`` insists on the student (with a note when it failed its check).

Under ``auto`` the choice is also made per text: the student was trained only on its training captions'
words (``student.json`` records them under ``words``), and a query holding any other word (another language,
a word no caption used) goes to the LM, with a note naming the word (``LazyEncoder.text_note``): a piece the
student never saw has an untrained embedding, and its answer would be wrong without a sign of it.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from lexsearch.errors import ModelError, UsageError
from lexsearch.model.config import fingerprint, read_config, tokenizer_source
from lexsearch.model.vocab import Vocabulary

logger = logging.getLogger(__name__)

TEXT_ENCODERS = ("auto", "lm", "student")


def choose_text_encoder(model_dir: str | Path, model_id: str, want: str = "auto") -> tuple[str, str]:
    """(``"student"`` or ``"lm"``, note) for texts of the model in ``model_dir`` (see the module docstring);
    the note is one line for the user when the choice is not the plain one ("" otherwise)."""
    from lexsearch.model.student import gate_verdict, read_student_record, student_exists

    if want not in TEXT_ENCODERS:
        raise UsageError(f"unknown text encoder {want!r} (use {', '.join(TEXT_ENCODERS)})")
    if want == "lm":
        return "lm", ""
    distil = distill_command(model_dir)
    if not student_exists(model_dir):
        if want == "student":
            raise ModelError(f"{model_dir} has no student query encoder; make one with: {distil}")
        return "lm", ""
    record = read_student_record(model_dir)
    if record.get("teacher_model_id") != model_id:
        # Distilled from other weights (the model was retrained since): its vectors would not match.
        if want == "student":
            raise ModelError(
                f"the student in {model_dir} is from an earlier version of the model; run: {distil}"
            )
        return (
            "lm",
            f"queries use the LM: the student in {model_dir} is stale (distilled from other weights); run: {distil}",
        )
    passed, why = gate_verdict(record)
    if passed:
        return "student", ""
    if want == "student":
        return "student", f"answering with the student as asked, though {why}"
    return (
        "lm",
        f"queries use the LM, not the student in {model_dir}: {why}; distil again (longer): {distil} --minutes N",
    )


def distill_command(model_dir: str | Path) -> str:
    """The ``lexsearch distill`` command for a model, quoted to run as printed: on the captions it was trained
    on when its folder records them (``train_config.json``), else with ``CAPTIONS`` to fill in."""
    import json
    import os
    import shlex

    data = "CAPTIONS"
    try:
        trained_on = json.loads((Path(model_dir) / "train_config.json").read_text()).get("data")
        if trained_on and os.path.exists(trained_on):
            data = trained_on
    except (OSError, ValueError, AttributeError):
        pass
    return shlex.join(["lexsearch", "distill", "--model", str(model_dir), "--data", data])


class LazyEncoder:
    """Has the ``Encoder`` interface (docs/INTERFACES.md); loads the real Encoder on first use of the networks."""

    def __init__(self, model_dir: str | Path, device: str = "auto", text_encoder: str = "auto") -> None:
        self.model_dir = Path(model_dir)
        self.device_name = device
        self.config = read_config(self.model_dir)
        self.model_id = fingerprint(self.model_dir)
        self.vocab = Vocabulary.load(tokenizer_source(self.config, self.model_dir), self.config.vocab_ids)
        self.vocab_hash = self.vocab.hash
        self.vocab_size = len(self.vocab)
        self.dense_dim = self.config.dense_dim
        self.image_size = self.config.image_size
        self._encoder = None
        # Index decoder threads ask for ``preprocess`` at once: the networks must load only once.
        self._load_lock = threading.Lock()
        # note: why texts do not go through the encoder asked for (or "auto"'s usual one); "" when nothing to say.
        self.text_encoder, self.note = choose_text_encoder(self.model_dir, self.model_id, text_encoder)
        self._student = None
        self._student_id: str | None = None
        # The words the student was trained on (auto only): a text with another word goes to the LM.
        self._student_words: frozenset[str] = frozenset()
        if self.text_encoder == "student" and text_encoder == "auto":
            from lexsearch.model.student import read_student_record

            self._student_words = frozenset(read_student_record(self.model_dir).get("words") or ())

    @property
    def loaded(self) -> bool:
        return self._encoder is not None

    def adopt(self, encoder) -> None:
        """Use ``encoder`` (this model's ``Encoder``, loaded already) for the networks instead of loading them."""
        with self._load_lock:
            self._encoder = encoder

    def words(self, term_ids) -> list[str]:
        return [self.vocab.words[int(t)] for t in term_ids]

    def word_terms(self, word: str) -> list[int]:
        return self.vocab.word_terms(word)

    def decode(self, row, top_k: int = 10) -> list[tuple[str, float]]:
        return self.vocab.decode(row, top_k)

    def preprocess(self, image):
        """(3, S, S) float32 model input, as ``Encoder.preprocess`` (no torch: index decoder threads use it)."""
        from lexsearch.model.images import preprocess

        return preprocess(image, self.image_size, self.config.image_mean, self.config.image_std)

    @property
    def student(self):
        """The loaded student (numpy), or None when texts go through the LM."""
        if self.text_encoder != "student":
            return None
        if self._student is None:
            from lexsearch.model.student import StudentEncoder

            student = StudentEncoder.load(self.model_dir, self.vocab.backend)
            student.keep = self._keep()
            self._student = student
        return self._student

    def _keep(self):
        """(V,) 0 for the columns the model masks (as ``LexVLA.keep``), or None when it masks none."""
        from lexsearch.model.vocab import prompt_only_columns

        cfg = self.config
        masked = prompt_only_columns(self.vocab, cfg.prompt + cfg.prompt_end, cfg.caption_words)
        if not masked:
            return None
        import numpy as np

        keep = np.ones(len(self.vocab), np.float32)
        keep[masked] = 0.0
        return keep

    def route(self, text: str) -> tuple[str, str]:
        """(``"student"`` or ``"lm"``, note) for one text: under ``auto`` a text holding a content word the
        student was not trained on goes to the LM, and the note names the word ("" when there is nothing to
        say).
        A student whose record lists no words (distilled before the record) answers every text."""
        if self.text_encoder != "student" or not self._student_words:
            return self.text_encoder, ""
        from lexsearch.model.vocab import text_words, unknown_words
        from lexsearch.search.parse import FUNCTION_WORDS

        # Function words ("the", "of") carry no match, and the student trained on texts with fillers added.
        words = [w for w in text_words(text) if w.lower() not in FUNCTION_WORDS]
        unknown = unknown_words(words, self._student_words)
        if not unknown:
            return "student", ""
        names = ", ".join(f"'{w}'" for w in unknown)
        what = "is not a word" if len(unknown) == 1 else "are not words"
        return "lm", f"this query uses the LM: {names} {what} the student was trained on"

    def text_note(self, text: str) -> str:
        """Why ``text`` goes to the LM rather than the student ("" when it does not, or nothing to say)."""
        return self.route(text)[1]

    def encode_texts(self, texts, batch_size: int = 32, sparsify=None):
        """Texts through the chosen text encoder (the student needs no torch); under ``auto``, a text with a
        word the student was not trained on through the LM (``route``)."""
        texts = list(texts)
        if self.text_encoder != "student":
            return self._network("encode_texts")(texts, batch_size=batch_size, sparsify=sparsify)
        to_lm = [i for i, t in enumerate(texts) if self.route(t)[0] == "lm"]
        if not to_lm:
            return self.student.encode_texts(texts, batch_size=batch_size, sparsify=sparsify)
        lm = self._network("encode_texts")(
            [texts[i] for i in to_lm], batch_size=batch_size, sparsify=sparsify
        )
        if len(to_lm) == len(texts):
            return lm
        return self._merged(texts, to_lm, lm, batch_size, sparsify)

    def _merged(self, texts, to_lm, lm, batch_size, sparsify):
        """The student's rows and the LM's (``lm``, of ``texts[to_lm]``) in the order of ``texts``."""
        import numpy as np
        import scipy.sparse as sp

        from lexsearch.model.vectors import Encoded

        lm_set = set(to_lm)
        to_student = [i for i in range(len(texts)) if i not in lm_set]
        st = self.student.encode_texts(
            [texts[i] for i in to_student], batch_size=batch_size, sparsify=sparsify
        )
        order = np.argsort(np.asarray(to_student + to_lm))  # row of each text in [student rows; LM rows]
        sparse = sp.vstack([sp.csr_matrix(st.sparse), sp.csr_matrix(lm.sparse)]).tocsr()[order]
        dense = None
        if st.dense is not None and lm.dense is not None:
            dense = np.concatenate([np.asarray(st.dense), np.asarray(lm.dense)])[order]
        return Encoded(sparse, dense)

    def query_key(self, text: str) -> str:
        """The query cache's key of ``text``: the LM's and the student's vectors never answer for each other."""
        if self.route(text)[0] == "student":
            from lexsearch.model.student import read_student_record

            if self._student_id is None:
                self._student_id = str(read_student_record(self.model_dir).get("id", ""))
            # \x1f (unit separator) cannot be typed into a query, so no text collides with this key.
            return f"\x1fstudent:{self._student_id}\x1f{text}"
        dtype = getattr(getattr(self._encoder, "model", None), "query_dtype", None)
        if dtype is not None:  # a server's LM in bf16: close to the float32 LM's vectors, not equal
            return f"\x1flm:{str(dtype).removeprefix('torch.')}\x1f{text}"
        return text

    # What needs the networks; anything else missing is a plain AttributeError (no accidental load).
    _NETWORK = frozenset(
        {
            "encode_images",
            "encode_pixels",
            "encode_words",
            "encode_patches",
            "word_margins",
            "grid",
            "model",
            "device",
        }
    )

    def __getattr__(self, name: str):
        if name not in LazyEncoder._NETWORK:
            raise AttributeError(name)
        return self._network(name)

    def _network(self, name: str):
        with self._load_lock:
            if self._encoder is None:
                from lexsearch.model.encoder import Encoder

                self._encoder = Encoder.load(self.model_dir, device=self.device_name)
        return getattr(self._encoder, name)
