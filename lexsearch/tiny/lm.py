"""The tiny LM stand-in's pretraining: what Llama's pretraining gives the paper for free.

LexVLA's lexical claim rests on the LM-head rows of Llama *meaning* words, and on the LM already answering the
in-context prompt with the caption's important words. A randomly initialised tiny Llama has neither, so its
words are arbitrary. :func:`pretrain_lm` gives it both, offline, in about a minute on a 2-core CPU.

Causal LM on text in the prompt's format
    Each training sequence is exactly what LexVLA feeds its LM at training time -- the prompt prefix (the
    paper's demonstration), the caption, the prompt suffix and ``prompt_end`` -- followed by the caption's
    important words in the demonstration's format (``red", "circle", "blue", "star".``). The ids are built by
    concatenating the three separately tokenised parts, as :meth:`LexVLA.tokenize` does, so the read-out
    position sees the same tokens as in training. The important words come in their order of mention, as in
    the paper's demonstration ("man", "riding", "white", "horse"), so the read-out ranks what a text names
    first above what it names later: the salience a real LM brings. Shuffled answers (used before) left that
    order for the LoRA to find; the first-named word then led the last-named one for about half of held-out
    captions, and on the toy world, whose captions name the largest shape first, t2i R@1 ranged 48.6-60.0 over
    five seeds, against 60.2-61.8 in order (docs/toy-results.md 0). The sigmoid read-out loss below still
    lifts every content word, so later words are not lost. Important words are the caption's words minus a
    generic English function-word list and the prompt's frame words [choice]: the paper relies on Llama
    already knowing what matters, and nothing here may be read off one world's caption templates.

Query-like texts
    A share of the texts (``lm_query_share``) are a few of a caption's important words alone ("orange cross"),
    with those words as the answer: queries are short word lists, and the read-out must name their words.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lexsearch.model.config import ModelConfig
from lexsearch.tiny.config import DEFAULT_STOP_WORDS, PretrainConfig, Progress, warmup_cosine

log = logging.getLogger(__name__)

# Under a deadline the schedule is fitted every this many steps, at the rate timed after the first ones
# (which pay one-off costs: timing them made a loaded machine's 1,500-step run stop one step short).
DEADLINE_PROBE_STEPS = 20
DEADLINE_PROBE_CAPTIONS = 64


_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


def important_words(caption: str, stop_words: Sequence[str] = DEFAULT_STOP_WORDS) -> list[str]:
    """The caption's content words, lowercased, in order of first appearance, without stop words."""
    stop = set(stop_words)
    seen: dict[str, None] = {}
    for word in _WORD.findall(caption.lower()):
        if word not in stop:
            seen.setdefault(word, None)
    return list(seen)


def prompt_stop_words(config: ModelConfig, stop_words: Sequence[str] = DEFAULT_STOP_WORDS) -> tuple[str, ...]:
    """``stop_words`` plus the prompt's frame words ("focus", "lies", "important", "words"): they stand
    around every text, so they never say what one text is about. The demonstration's quoted words ("man",
    "white", "horse") are content words like any caption's and stay important."""
    prefix, suffix = config.prompt_parts()
    frame = re.sub(r'"[^"]*"', " ", prefix + suffix)
    extra = [w for w in _WORD.findall(frame.lower()) if w not in stop_words]
    return tuple(stop_words) + tuple(dict.fromkeys(extra))


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


def _query_like(words: list[str], rng: np.random.Generator) -> list[str]:
    """Some of ``words`` (1 to all, in their order): what a person types to find the captioned image."""
    keep = np.sort(rng.choice(len(words), size=int(rng.integers(1, len(words) + 1)), replace=False))
    return [words[i] for i in keep]


def _lm_batch(
    fmt: PromptFormat,
    captions: Sequence[str],
    stop_words,
    rng: np.random.Generator,
    pad_id: int,
    query_share: float = 0.0,
):
    """Body ids after the shared prefix (B, L), attention mask (B, L), answer positions (B, L) bool and the
    read-out targets (position (B,), multi-hot of the important words' first pieces (B, V_full)).

    A token's weight is 1, or ``answer_weight`` (applied by the caller) where it belongs to the answer: the
    caption tokens are unpredictable by construction and would otherwise dominate the gradient.
    """
    rows, starts, answers = [], [], []
    n_prefix = len(fmt.prefix)
    for caption in captions:
        words = important_words(caption, stop_words)
        if words and rng.random() < query_share:
            words = _query_like(words, rng)
            caption = " ".join(words)
        answers.append(words)
        ids, n_query = fmt.sequence(caption, words)  # in order of mention, as the demonstration
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
    for i, words in enumerate(answers):
        for word in words:
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
    deadline: float | None = None,
) -> dict:
    """Train ``lm`` in place as a causal LM on prompt-format sequences of ``captions``; returns figures.

    ``deadline`` (a ``time.monotonic()`` value): after a few steps the schedule is shortened to the steps
    that fit before it (a whole cosine, not a cut one), and the run stops there in any case.
    """
    fmt = PromptFormat(tokenizer, model_config)
    stop_words = prompt_stop_words(model_config, cfg.stop_words)
    rng = np.random.default_rng(cfg.seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # The read-out check before and after (~a second each on a CPU): under a deadline only after, and on
    # fewer captions (a random LM's read-out is ~0: "before" is a figure, not a need).
    probe = list(captions[: min(256 if deadline is None else DEADLINE_PROBE_CAPTIONS, len(captions))])
    before = content_hit_rate(lm, fmt, probe, stop_words) if deadline is None else None
    opt = torch.optim.AdamW(lm.parameters(), lr=cfg.lm_lr, weight_decay=0.01, betas=(0.9, 0.98))
    total = cfg.lm_steps
    warmup = max(1, total // 20)
    # The lambda reads `warmup` and `total` when called, so a deadline can shorten the schedule below.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, total))
    lm.train()
    loss_value = float("nan")
    step, mark = 0, 0.0
    if deadline is not None and time.monotonic() >= deadline:
        total = 0  # no time left: the LM stays as built (random), and says so in lm_steps_done
    while step < total:
        pick = rng.integers(0, len(captions), size=cfg.lm_batch_size)
        ids, mask, answer, readout = _lm_batch(
            fmt, [captions[i] for i in pick], stop_words, rng, pad_id, cfg.lm_query_share
        )
        loss = lm_step_loss(lm, fmt, ids, mask, answer, cfg.lm_answer_weight, readout, cfg.lm_readout_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_value = float(loss.detach())
        step += 1
        if progress is not None:
            progress("lm", step, total, {"loss": loss_value})
        if deadline is not None:
            now = time.monotonic()
            if step == DEADLINE_PROBE_STEPS:
                mark = now  # the steady rate is timed from here: the first steps pay one-off costs
            elif step % DEADLINE_PROBE_STEPS == 0 and step > DEADLINE_PROBE_STEPS:
                # The steps that fit at the rate so far; the schedule only ever gets shorter.
                fit = step + int((deadline - now) / ((now - mark) / (step - DEADLINE_PROBE_STEPS)))
                if fit < total:
                    total = max(step, fit)
                    warmup = min(warmup, max(1, total // 20))
            if now >= deadline:
                break
    lm.eval()
    after = content_hit_rate(lm, fmt, probe, stop_words) if step else before
    log.info("tiny LM pretraining: %d steps, loss %.3f, content-word read-out %s", step, loss_value, after)
    return {
        "lm_loss": loss_value,
        "lm_content_hit_before": before,
        "lm_content_hit_after": after,
        "lm_steps_done": step,
        "lm_probe_captions": len(probe),
    }
