"""How the tiny bases are pretrained: the settings every stand-in shares (and the cache key)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

# Words that are never "important" [choice]: English function words (articles, pronouns, prepositions,
# conjunctions, auxiliaries, determiners, common adverbs; as in the usual IR stop lists) and the words
# captions use about themselves ("image", "shows"). A generic list, not one read off any world's caption
# templates: the paper relies on Llama already knowing what matters in any caption. The prompt's own words
# are added to it at pretraining time (see lexsearch.tiny.lm.prompt_stop_words).
DEFAULT_STOP_WORDS: tuple[str, ...] = tuple(
    """a about above across after again against all almost along also although am among an and another any
    are around as at be because been before behind being below beside besides between beyond both but by can
    could did do does doing down during each either else every few for from further had has have having he
    her here hers herself him himself his how i if in inside into is it its itself just me more most my
    myself near neither next no nor not now of off on once one only onto or other our ours out outside over
    own per same she should so some such than that the their theirs them themselves then there these they
    this those though through to too toward towards under until up upon us very was we were what when where
    whether which while who whom whose why will with within without would yet you your yours s t there's
    it's that's here's
    image images picture pictures photo photos photograph shows showing shown depicts view""".split()
)

Progress = Callable[[str, int, int, dict], None]  # (stage, step, total, metrics) -> None


@dataclass
class PretrainConfig:
    """How the tiny bases are pretrained. Every field is part of the cache key."""

    seed: int = 0
    tokenizer_vocab_size: int = 2000
    # --- LM: ~300 steps of 32 prompt-format sequences take ~1 min on 2 CPU cores ---
    # A 2-layer LM learns to *copy* the caption's words into the answer only after several hundred steps
    # (before that it predicts every colour/shape word alike): a high LR and answer-weighted loss. 600 steps
    # were enough on the toy world's captions (read-out exact on 100% of held-out ones) but not on the
    # shapes2 world's natural phrasings (66%); 1,500 give 100% on both (bench/lm_readout_probe.py).
    lm_steps: int = 1500
    lm_batch_size: int = 32
    lm_lr: float = 5e-3
    lm_answer_weight: float = 50.0  # loss weight of the quoted-words answer relative to the caption tokens
    # Weight of a sigmoid loss at the read-out position (caption's words up, every other piece down) [choice]:
    # CE alone leaves all eleven toy content words at similar logits, and elu1p(logits) is then flat. At 10
    # the caption's words were the top-|words| of the read-out for only 14% of held-out toy captions (the
    # other shape/colour words sat just below), at 100 for 100%, same steps (issue 3, 2,000-image world).
    lm_readout_weight: float = 100.0
    stop_words: tuple[str, ...] = DEFAULT_STOP_WORDS
    # Share of pretraining texts that are a query-like list of some of a caption's content words instead of
    # the caption [choice]: search queries ("orange cross") are short word lists, not captions, and the
    # read-out must name their words too.
    lm_query_share: float = 0.3
    # --- ViT (fallback when the shipped one does not fit): masked-patch reconstruction on training images ---
    vit_epochs: int = 15
    vit_batch_size: int = 64
    vit_lr: float = 2e-3
    vit_mask_ratio: float = 0.5  # share of 2x2-patch blocks replaced by the mask token [choice]
    vit_visible_weight: float = 0.25  # loss weight of visible patches reconstructing themselves [choice]
    vit_max_images: int = 4000  # cap, so a large --data folder does not blow the time budget
    # Load the shipped ViT (lexsearch/tiny/assets/tiny_vit, pretrained once on a generic toy corpus) when it
    # matches the vision config, instead of pretraining one on the training set; see lexsearch.tiny.vit_asset.
    use_shipped_vit: bool = True

    def __post_init__(self) -> None:
        self.stop_words = tuple(self.stop_words)


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
