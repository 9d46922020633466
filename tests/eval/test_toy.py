"""The toy-world word metrics on hand-made vectors: explanation precision, its controls, off-caption words."""

from __future__ import annotations

import numpy as np
import pytest

from lexsearch.eval import toy as M

WORDS = ["red", "blue", "circle", "square", "and", "the"]


def test_explanation_precision_on_hand_made_vectors():
    vecs = np.array(
        [
            [0.9, 0.0, 0.8, 0.0, 0.1, 0.0],  # red circle: both in top 2
            [0.0, 0.9, 0.0, 0.05, 0.8, 0.7],  # blue square: square only 4th
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # an empty vector explains nothing
        ]
    )
    targets = [("red", "circle"), ("blue", "square"), ("red", "square")]
    assert M.top_words(vecs, WORDS, 2)[:2] == [["red", "circle"], ["blue", "and"]]
    assert M.explanation_hits(vecs, WORDS, targets, k=2).tolist() == [True, False, False]
    assert M.explanation_precision(vecs, WORDS, targets, k=2) == pytest.approx(1 / 3)
    assert M.explanation_precision(vecs, WORDS, targets, k=3) == pytest.approx(1 / 3)
    assert M.explanation_precision(vecs[:2], WORDS, targets[:2], k=4) == 1.0


def test_random_codebook_control_is_near_chance_for_a_perfect_model():
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(60)]
    targets = [tuple(vocab[j] for j in rng.choice(60, 2, replace=False)) for _ in range(400)]
    vecs = np.zeros((400, 60))
    for i, (a, b) in enumerate(targets):
        vecs[i, vocab.index(a)], vecs[i, vocab.index(b)] = 1.0, 0.9
    assert M.explanation_precision(vecs, vocab, targets, k=5) == 1.0
    control = M.random_codebook_control(vecs, vocab, targets, k=5, draws=5)
    assert control < 0.05
    assert M.chance_precision(60, 2, 5) == pytest.approx(5 * 4 / (60 * 59))
    assert M.chance_precision(10, 2, 1) == 0.0


def test_top_word_outside_caption():
    vecs = np.array([[0.9, 0.1, 0, 0, 0, 0], [0, 0, 0, 0, 0.9, 0], [0, 0, 0, 0, 0, 0.9]])
    captions = ["a red circle", "blue square", "the blue square"]
    assert M.top_word_outside_caption(vecs, WORDS, captions) == pytest.approx(1 / 3)


def test_stray_words_count_function_words_and_prompt_words_the_captions_do_not_say():
    tops = [["red", "circle", "the"], ["white", "circle"], ["white", "square"], ["blue", "important"]]
    captions = [["a red circle"], ["A white circle."], ["a blue square"], ["blue square"]]
    share, counts = M.stray_words(tops, captions, ["the", "important", "white", "horse"])
    # Row 1: "the" (function word); row 2: "white" is said by its caption; row 3: "white" is not; row 4.
    assert share == pytest.approx(3 / 4)
    assert counts == {"the": 1, "white": 1, "important": 1}


def test_a_prompt_word_that_is_a_world_word_is_graded_as_content_not_as_a_stray():
    # The paper's prompt says "white"; in a world with white objects, "white" on an image without one is a
    # colour mistake (wrong_world_words), exactly as "blue" would be, and not a prompt word leaking in.
    tops = [["red", "circle", "white"], ["blue", "square", "horse"], ["red", "square", "blue"]]
    captions = [["a red circle"], ["a blue square"], ["a red square"]]
    share, counts = M.stray_words(tops, captions, ["white", "horse"], world_words=["white", "red", "blue"])
    assert share == pytest.approx(1 / 3) and counts == {"horse": 1}
    held = [{"red", "circle"}, {"blue", "square"}, {"red", "square"}]
    share, counts = M.wrong_world_words(tops, held, ["white", "red", "blue", "circle", "square"])
    assert share == pytest.approx(2 / 3) and counts == {"white": 1, "blue": 1}


def test_query_word_hits_need_both_words_in_the_top_k():
    vecs = np.array([[0.9, 0.0, 0.8, 0.0, 0.1, 0.0], [0.0, 0.9, 0.0, 0.05, 0.8, 0.7]])
    hits = M.query_word_hits(vecs, WORDS, [("red", "circle"), ("blue", "square")], k=3)
    assert hits.tolist() == [True, False]
