"""Do the words mean something? Lexical-interpretability metrics on a labelled toy world, with their controls.

Retrieval alone proves nothing about LexVLA's lexical claim (the issue 3 prototype: a random LM gave the best
recall with meaningless words), so every figure here comes with a control computed in the same run:

- **explanation precision**: the share of images whose top-k words (k = 5) include both the colour and the
  shape word of their largest shape -- the words a person would use to explain the image;
- **random-codebook control**: the same precision after a seeded random permutation of the vocabulary's
  columns, i.e. the same vectors read through a codebook whose dimensions have nothing to do with their
  words. Whatever a model gets from frequent words or from the vector shape alone survives the permutation;
  what it gets from the words' meaning does not, so the control sits near chance;
- **top word outside the caption**: how often an image's strongest word is not a word of its caption (the
  shortcut-token symptom the overuse penalty exists to stop);
- **query words on top**: for every single-object query "COLOUR SHAPE" of the world's words, whether both
  query words are among the query vector's top-3 words (a query vector that holds other words than the
  query's own explains its matches with words the user never typed);
- **stray words**: how often an image's top-k words hold a function word (a generic English list, not the
  tiny preset's own stop list) or a word of the prompt that is not in the image's captions. A prompt word
  that is also one of the world's colour or shape words (the paper's prompt says "white", a colour of some
  worlds) is graded as what it is there, a content word, by the next figure;
- **wrong world words**: how often an image's top-k words hold a colour or shape word of the world that no
  object of the image has (a colour or shape mistake, the same test for every such word);
- **PatchDis on shape words** (via :mod:`lexsearch.eval.patchdis`) with its random-assignment baseline.

:func:`toy_validation` runs them all on a model in memory; ``lexsearch train`` calls it in its final
validation when the validation folder is a toy world (it has ``labels.jsonl``).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")

# Function words of English (articles, pronouns, prepositions, conjunctions, auxiliaries, determiners and
# the usual adverbs), as in the common IR stop lists. Kept here, apart from the tiny preset's own list
# (lexsearch.tiny.config), so the check does not grade the training side with its own definition.
FUNCTION_WORDS = frozenset(
    """a about above across after again against all almost along also although am among an and another any
    are around as at be because been before behind being below beside besides between beyond both but by can
    could did do does doing down during each either else every few for from further had has have having he
    her here hers herself him himself his how i if in inside into is it its itself just me more most my
    myself near neither next no nor not now of off on once one only onto or other our ours out outside over
    own per same she should so some such than that the their theirs them themselves then there these they
    this those though through to too toward towards under until up upon us very was we were what when where
    whether which while who whom whose why will with within without would yet you your yours""".split()
)


def _dense(vectors) -> np.ndarray:
    """(N, V) float array from a dense array, a torch tensor or a scipy sparse matrix."""
    if hasattr(vectors, "toarray"):
        return np.asarray(vectors.toarray(), dtype=np.float32)
    if hasattr(vectors, "detach"):
        return vectors.detach().float().cpu().numpy()
    return np.asarray(vectors, dtype=np.float32)


def top_words(vectors, words: Sequence[str], k: int = 5) -> list[list[str]]:
    """The ``k`` strongest words of each row (ties broken by column order; zero entries never count)."""
    arr = _dense(vectors)
    order = np.argsort(-arr, axis=1, kind="stable")[:, :k]
    return [[words[j] for j in row if arr[i, j] > 0] for i, row in enumerate(order)]


def explanation_hits(
    vectors, words: Sequence[str], targets: Sequence[Sequence[str]], k: int = 5
) -> np.ndarray:
    """Bool (N,): whether row i's top-``k`` words contain every word of ``targets[i]``."""
    tops = top_words(vectors, words, k)
    if len(tops) != len(targets):
        raise ValueError(f"{len(tops)} vectors but {len(targets)} target word lists")
    return np.array([set(t) <= set(top) for t, top in zip(targets, tops)], dtype=bool)


def explanation_precision(
    vectors, words: Sequence[str], targets: Sequence[Sequence[str]], k: int = 5
) -> float:
    """Share of rows whose top-``k`` words include all their target words (e.g. colour + shape)."""
    hits = explanation_hits(vectors, words, targets, k)
    return float(hits.mean()) if hits.size else float("nan")


def random_codebook_control(
    vectors,
    words: Sequence[str],
    targets: Sequence[Sequence[str]],
    k: int = 5,
    seed: int = 0,
    draws: int = 10,
) -> float:
    """Explanation precision with the vocabulary's columns randomly permuted (mean over ``draws`` seeds).

    The permutation is shared by all rows, as a codebook is: a model that always lights one dimension for red
    things keeps doing so, but that dimension now reads as an arbitrary word.
    """
    arr = _dense(vectors)
    rng = np.random.default_rng(seed)
    scores = [
        explanation_precision(arr[:, rng.permutation(arr.shape[1])], words, targets, k) for _ in range(draws)
    ]
    return float(np.mean(scores))


def chance_precision(vocab_size: int, n_targets: int = 2, k: int = 5) -> float:
    """Probability that ``n_targets`` given words are all among ``k`` drawn at random from ``vocab_size``."""
    if k < n_targets:
        return 0.0
    return math.comb(vocab_size - n_targets, k - n_targets) / math.comb(vocab_size, k)


def top_word_outside_caption(vectors, words: Sequence[str], captions: Sequence[str]) -> float:
    """Share of rows whose strongest word is not a word of the row's caption."""
    tops = top_words(vectors, words, 1)
    outside = [
        not top or top[0].lower() not in set(_WORD.findall(c.lower())) for top, c in zip(tops, captions)
    ]
    return float(np.mean(outside)) if outside else float("nan")


def _share_and_counts(strays: Sequence[Sequence[str]]) -> tuple[float, dict[str, int]]:
    counts: dict[str, int] = {}
    for row in strays:
        for w in row:
            counts[w] = counts.get(w, 0) + 1
    share = sum(bool(row) for row in strays) / len(strays) if len(strays) else float("nan")
    return share, dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def stray_words(
    tops: Sequence[Sequence[str]],
    captions: Sequence[Sequence[str]],
    prompt_words: Sequence[str],
    world_words: Sequence[str] = (),
) -> tuple[float, dict[str, int]]:
    """(share of rows whose top words hold a function word or a prompt word absent from the row's captions,
    count per stray word). ``tops`` are each row's top words, ``captions`` each row's caption texts.
    Prompt words among ``world_words`` are left to :func:`wrong_world_words`."""
    prompt = {w.lower() for w in prompt_words} - {w.lower() for w in world_words}
    strays = []
    for top, caps in zip(tops, captions):
        said = {w for c in caps for w in _WORD.findall(c.lower())}
        strays.append(
            [w for w in top if w.lower() in FUNCTION_WORDS or (w.lower() in prompt and w.lower() not in said)]
        )
    return _share_and_counts(strays)


def wrong_world_words(
    tops: Sequence[Sequence[str]], held: Sequence[set[str]], world_words: Sequence[str]
) -> tuple[float, dict[str, int]]:
    """(share of rows whose top words hold a world word (colour or shape) the row's image does not have,
    count per word). ``held`` is each image's set of colour and shape words."""
    world = {w.lower() for w in world_words}
    return _share_and_counts(
        [[w for w in top if w.lower() in world and w.lower() not in h] for top, h in zip(tops, held)]
    )


def query_word_hits(
    text_vectors, words: Sequence[str], queries: Sequence[Sequence[str]], k: int = 3
) -> np.ndarray:
    """Bool (N,): whether every word of query i is among the top-``k`` words of its text vector."""
    return explanation_hits(text_vectors, words, queries, k)


# ---------------------------------------------------------------------------------------- on a model


def _text_vectors(model, texts: Sequence[str], device, batch_size: int) -> np.ndarray:
    import torch

    rows = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            ids, mask = model.tokenize(list(texts[start : start + batch_size]))
            rows.append(model.encode_text(ids.to(device), mask.to(device))[0].float().cpu().numpy())
    return np.concatenate(rows)


def world_words(root: Path) -> tuple[list[str], list[str]]:
    """(colours, shapes) named by a labelled world's ``labels.jsonl``, sorted."""
    from lexsearch.data.toyworld import read_labels

    labels = read_labels(root)
    colours = sorted({s.colour for lab in labels.values() for s in lab.shapes})
    shapes = sorted({s.shape for lab in labels.values() for s in lab.shapes})
    return colours, shapes


def toy_targets(root: Path, image_keys: Sequence[str]) -> list[tuple[str, str]] | None:
    """(colour, shape) of the largest shape of each image, or None when ``root`` is not a toy world."""
    from lexsearch.data.toyworld import read_labels

    if not (Path(root) / "labels.jsonl").is_file():
        return None
    labels = read_labels(root)
    missing = [k for k in image_keys if k not in labels]
    if missing:
        log.warning(
            "%s: no toy labels for %d images (e.g. %s): interpretability metrics skipped",
            root,
            len(missing),
            missing[0],
        )
        return None
    return [labels[k].largest() for k in image_keys]


def _held_words(root: Path, image_keys: Sequence[str]) -> list[set[str]]:
    """Each image's colour and shape words (every object, not only the largest)."""
    from lexsearch.data.toyworld import read_labels

    labels = read_labels(root)
    return [{w for s in labels[k].shapes for w in (s.colour, s.shape)} for k in image_keys]


def _image_vectors(model, root: Path, keys: Sequence[str], device, batch_size: int) -> np.ndarray:
    import torch

    from lexsearch.model.images import open_image, preprocess

    cfg = model.config
    rows = []
    with torch.no_grad():
        for start in range(0, len(keys), batch_size):
            batch = np.stack(
                [
                    preprocess(open_image(Path(root) / k), cfg.image_size, cfg.image_mean, cfg.image_std)
                    for k in keys[start : start + batch_size]
                ]
            )
            rows.append(model.encode_image(torch.from_numpy(batch).to(device))[0].float().cpu().numpy())
    return np.concatenate(rows)


def _sparsify(arr: np.ndarray, vocab_size: int) -> np.ndarray:
    """The paper's inference sparsification: keep entries > 1/sqrt(V)."""
    return np.where(arr > 1.0 / math.sqrt(vocab_size), arr, 0.0).astype(np.float32)


def toy_validation(
    model, pairs, device=None, k: int = 5, batch_size: int = 128, patchdis: bool = True, seed: int = 0
) -> dict | None:
    """Interpretability figures of ``model`` on held-out toy pairs (``pairs.source`` a toy world folder).

    Returns None when the folder has no toy labels. Image vectors get the 1/sqrt(V) sparsification, as at
    retrieval time. The model is left in the training mode it had.
    """
    import torch

    from lexsearch.model.vocab import display_words

    root = Path(getattr(pairs, "source", ""))
    keys = list(getattr(pairs, "images", []))
    if not keys or not root.is_dir():
        return None
    targets = toy_targets(root, keys)
    if targets is None:
        return None
    device = device or torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        words = display_words(model.tokenizer.convert_ids_to_tokens(list(model.config.vocab_ids)))
        vecs = _sparsify(_image_vectors(model, root, keys, device, batch_size), model.vocab_size)
        # One caption per image for the caption-word check (the first, as listed).
        captions = [pairs.captions[pairs.image_captions[j][0]] for j in range(len(keys))]
        all_captions = [[pairs.captions[c] for c in pairs.image_captions[j]] for j in range(len(keys))]
        prefix, suffix = model.config.prompt_parts()
        colours, shapes = world_words(root)
        tops = top_words(vecs, words, k)
        share, strays = stray_words(tops, all_captions, _WORD.findall(prefix + suffix), colours + shapes)
        wrong_share, wrong = wrong_world_words(tops, _held_words(root, keys), colours + shapes)
        queries = [(c, s) for c in colours for s in shapes]
        qvecs = _sparsify(
            _text_vectors(model, [f"{c} {s}" for c, s in queries], device, batch_size), model.vocab_size
        )
        q_hits = query_word_hits(qvecs, words, queries, 3)
        misses = [
            f"{c} {s}: {', '.join(t)}"
            for (c, s), t, h in zip(queries, top_words(qvecs, words, 3), q_hits)
            if not h
        ]
        result = {
            "k": k,
            "explanation_precision": explanation_precision(vecs, words, targets, k),
            "random_codebook_control": random_codebook_control(vecs, words, targets, k, seed=seed),
            "chance": chance_precision(len(words), 2, k),
            "colour_in_top": explanation_precision(vecs, words, [t[:1] for t in targets], k),
            "shape_in_top": explanation_precision(vecs, words, [t[1:] for t in targets], k),
            "top_word_outside_caption": top_word_outside_caption(vecs, words, captions),
            "stray_word_images": share,
            "stray_words": dict(list(strays.items())[:8]),
            "wrong_world_word_images": wrong_share,
            "wrong_world_words": dict(list(wrong.items())[:8]),
            "query_words_top3": float(q_hits.mean()),
            "query_misses": misses[:8],
            "n_queries": len(queries),
            "n_images": len(keys),
        }
        if patchdis:
            result.update(toy_patchdis(model, root, keys, device, seed=seed))
    finally:
        model.train(was_training)
    return result


def toy_patchdis(
    model, root: Path, image_keys: Sequence[str] | None = None, device=None, seed: int = 0
) -> dict:
    """PatchDis mIoU on the toy world's shape words and its random-assignment baseline (percent)."""
    import torch

    from lexsearch.eval.patchdis import CocoInstances, PatchDisOptions, evaluate_patchdis
    from lexsearch.model.encoder import Encoder

    root = Path(root)
    coco = CocoInstances.load(root / "annotations" / "instances.json", root)
    if image_keys is not None:
        keep = set(image_keys)
        coco.images = [im for im in coco.images if im.file_name in keep]
    device = device or torch.device("cpu")
    was_training = model.training
    try:
        # The Encoder facade gives PatchDis the same word and patch vectors the product uses.
        report = evaluate_patchdis(Encoder(model, device), coco, PatchDisOptions(seed=seed))
    finally:
        model.train(was_training)
    return {"patchdis_miou": report.miou, "patchdis_random": report.miou_random}
