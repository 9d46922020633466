"""What a run records about its training data in the checkpoint: the words of its captions, and how strongly
its held-out images show their best word.

``ModelConfig.caption_words`` is what ``query`` compares a query's words with (a word no caption used gets a
note) and what decides which prompt words are masked (:func:`lexsearch.model.vocab.prompt_only_columns`). A
caption folder gives the whole set before the first step; a shard stream gives it as its batches go by, each
rank its own share, merged at every save.
"""

from __future__ import annotations

import logging

from lexsearch.model.vocab import caption_words

log = logging.getLogger(__name__)


class CaptionWords:
    """The growing set of training-caption words of one run, written into the model's config at each save."""

    def __init__(self, model, words: set[str] | None, complete: bool) -> None:
        self.model = model
        self.words = words  # None: the run starts from a model whose words nobody recorded; keep none
        self.complete = complete  # the whole set was known at the start (a caption folder)
        self._recorded = -1 if words is None else len(model.config.caption_words)

    @classmethod
    def start(cls, model, pairs, init: str = "") -> CaptionWords:
        """The record of a run on ``pairs`` whose model is ``model`` (fresh, resumed, or ``init``'s)."""
        recorded = set(model.config.caption_words)
        if init and not recorded:
            # Fine-tuning a checkpoint trained on captions nobody recorded: a record of only the new ones
            # would call the older captions' words unknown.
            log.info("%s records no training words; this run records none either", init)
            return cls(model, None, complete=True)
        complete = hasattr(pairs, "captions")
        words = recorded | (caption_words(pairs.captions) if complete else set())
        if complete and words != recorded:
            # Before the first step, so the prompt-only mask is the same in training as afterwards.
            model.set_caption_words(words)
        return cls(model, words, complete)

    def see(self, captions) -> None:
        """The captions of one batch (only a stream needs them: a folder's words are all known)."""
        if self.words is not None and not self.complete:
            self.words.update(caption_words(captions))

    def measure(self, val, info) -> None:
        """At the end of a run: the held-out images' word margins, for explain's weak-words caveat."""
        if info.is_main and val is not None:
            self.model.config.word_margins = margin_reference(self.model, val, info.device)

    def record(self, info) -> None:
        """Put the words seen so far into the model's config (every rank calls this: a stream's ranks each
        saw their own captions)."""
        if self.words is None:
            return
        if not self.complete and info.distributed:
            import torch.distributed as dist

            every: list = [None] * info.world_size
            dist.all_gather_object(every, sorted(self.words))
            self.words = set().union(*(set(w) for w in every))
        if len(self.words) != self._recorded:
            self.model.set_caption_words(self.words)
            self._recorded = len(self.words)


# Percentiles of the held-out margins kept in the checkpoint (``ModelConfig.word_margins``).
MARGIN_PERCENTILES = (0, 0.5, 1, 5, 50)
# Held-out images measured at most: enough for a stable 1st percentile, seconds even for a large model.
MARGIN_IMAGES = 1000


def margin_reference(model, pairs, device, batch_size: int = 64) -> dict[str, float]:
    """Percentiles of ``LexVLA.word_margin`` over (up to ``MARGIN_IMAGES``) images of ``pairs`` (the run's
    held-out set): what "the model's own kind of image" looks like, for explain's weak-words line."""
    import numpy as np
    import torch

    from lexsearch.model.encoder import autocast
    from lexsearch.train.batches import image_batches

    was_training = model.training
    model.eval()
    margins: list[float] = []
    try:
        with torch.no_grad():
            for pixels in image_batches(pairs, model.config, batch_size, 0):
                with autocast(device):
                    margins += model.word_margin(pixels.to(device)).float().cpu().tolist()
                if len(margins) >= MARGIN_IMAGES:
                    break
    finally:
        model.train(was_training)
    values = np.asarray(margins[:MARGIN_IMAGES], np.float64)
    if values.size == 0:
        return {}
    ref = {f"p{q:g}": round(float(np.percentile(values, q)), 4) for q in MARGIN_PERCENTILES}
    ref["n"] = int(values.size)
    return ref
