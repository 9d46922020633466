"""The query path: parsing, operators, candidates, re-rank, explanations, outputs (lexsearch/search/).

Most tests run on an in-memory collection implementing the store's read API and a bag-of-words text encoder,
so expected answers can be computed by hand; one test runs the real CLI on a real (tiny) model and index.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import scipy.sparse as sp

from lexsearch.errors import UsageError
from lexsearch.search.candidates import PruneConfig, accumulate, candidates, top_k
from lexsearch.search.explain import merge_words
from lexsearch.search.output import format_paths, format_table, results_to_json
from lexsearch.search.parse import Clause, Filters, parse_query, resolve_operators
from lexsearch.search.postings import PostingsIndex
from lexsearch.search.query import Result, search, search_by_image
from lexsearch.search.rerank import ForwardRows, lexical_scores, query_vector, rerank

VOCAB = [
    "horse",
    "white",
    "black",
    "beach",
    "night",
    "car",
    "red",
    "dog",
    "grass",
    "sky",
    "skate",
    "##board",
    "Horse",
    "##horse",
]
COL = {w: i for i, w in enumerate(VOCAB)}


class BagEncoder:
    """Text -> L2-normalised bag of words over VOCAB (a word also lights 'sky' a little, like a real model
    spreading mass to related words); word_terms splits 'skateboard' into two pieces like a tokenizer."""

    vocab_size = len(VOCAB)

    def __init__(self, dense_dim: int = 0):
        self.dense_dim = dense_dim
        self.text_calls = 0
        self._proj = np.random.default_rng(1).standard_normal((len(VOCAB), max(dense_dim, 1)))

    def _vec(self, words) -> np.ndarray:
        v = np.zeros(len(VOCAB), np.float32)
        for w in words:
            for c in self.word_terms(w):
                v[c] += 1.0
        if v.any():
            v[COL["sky"]] += 0.25
        return v / (np.linalg.norm(v) or 1.0)

    def encode_texts(self, texts, batch_size=32):
        self.text_calls += 1
        rows = [self._vec(re.findall(r"\w+", t.lower())) for t in texts]
        return _Encoded(sp.csr_matrix(np.stack(rows)), self._dense(np.stack(rows)))

    def encode_images(self, images, batch_size=32):
        # An "image" here is the word list it shows, e.g. ["white", "horse"].
        rows = [self._vec(im) for im in images]
        return _Encoded(sp.csr_matrix(np.stack(rows)), self._dense(np.stack(rows)))

    def _dense(self, m):
        if not self.dense_dim:
            return None
        d = (m @ self._proj).astype(np.float32)
        return d / (np.linalg.norm(d, axis=1, keepdims=True) + 1e-9)

    def word_terms(self, word):
        if word == "skateboard":
            return [COL["skate"], COL["##board"]]
        return [COL[word]] if word in COL else []

    def words(self, term_ids):
        return [VOCAB[int(t)] for t in term_ids]


class _Encoded:
    def __init__(self, sparse, dense):
        self.sparse, self.dense = sparse, dense


class MemoryCollection:
    """The store's read API (docs/INTERFACES.md) over a dict of image vectors."""

    def __init__(self, images: dict[int, dict[str, float]], dense: dict[int, np.ndarray] | None = None):
        self.path = "memory"
        self._rows = {}
        for i, ws in images.items():
            cols = np.array(sorted(COL[w] for w in ws), np.int32)
            vals = np.array([ws[VOCAB[c]] for c in cols], np.float32)
            self._rows[i] = (cols, vals / (np.linalg.norm(vals) or 1.0))
        self._dense = dense or {}
        dim = len(next(iter(self._dense.values()))) if self._dense else 0
        self.meta = {"model_id": "bag", "vocab_size": len(VOCAB), "dense_dim": dim}
        self.cache: dict[str, tuple] = {}

    @property
    def max_image_id(self) -> int:
        return max(self._rows, default=0)

    def postings(self, term_ids):
        out = {}
        for t in term_ids:
            ids = [i for i in sorted(self._rows) if t in self._rows[i][0]]
            if ids:
                w = [self._rows[i][1][np.searchsorted(self._rows[i][0], t)] for i in ids]
                out[t] = (np.array(ids, np.uint32), np.array(w, np.float32))
        return out

    def forward(self, image_ids):
        return {int(i): self._rows[int(i)] for i in image_ids if int(i) in self._rows}

    def image_paths(self, image_ids):
        return {int(i): f"/photos/{int(i):03d}.jpg" for i in image_ids if int(i) in self._rows}

    def dense_scores(self, q, image_ids):
        return np.array([float(self._dense[int(i)] @ q) for i in image_ids], np.float32)

    def dense_search(self, q, k):
        ids = np.array(sorted(self._dense), np.int64)
        scores = np.array([self._dense[i] @ q for i in ids.tolist()], np.float32)
        order = np.argsort(-scores, kind="stable")[:k]
        return ids[order], scores[order]

    def cached_query(self, text):
        hit = self.cache.get(text)
        return None if hit is None else _Encoded(*hit)

    def cache_query(self, text, sparse_row, dense_row):
        dense = None if dense_row is None else dense_row.reshape(1, -1)
        self.cache[text] = (sp.csr_matrix(sparse_row), dense)


IMAGES = {
    1: {"white": 1.0, "horse": 1.0, "beach": 0.5, "sky": 0.3},
    2: {"white": 1.0, "horse": 0.8, "night": 0.9},
    3: {"black": 1.0, "horse": 1.0, "beach": 0.7},
    4: {"red": 1.0, "car": 1.0, "night": 0.4},
    5: {"dog": 1.0, "grass": 0.8, "sky": 0.5},
    6: {"skate": 1.0, "##board": 0.9, "horse": 0.2},
    7: {"skate": 1.0, "horse": 0.3},
    8: {"Horse": 0.7, "##horse": 0.3, "white": 0.4},
}


@pytest.fixture
def col():
    return MemoryCollection(IMAGES)


def exact_score(col, image_id, q: np.ndarray) -> float:
    cols, vals = col.forward([image_id])[image_id]
    return float(q[cols] @ vals)


# ------------------------------------------------------------------------------------------- parsing
def test_parse_words_phrases_and_operators():
    p = parse_query('white horse "red car"  +beach -night -"black cat" t-shirt + -')
    assert p.terms == ["white", "horse", "red car", "beach", "t-shirt"]
    assert p.must == ["beach"] and p.exclude == ["night", "black cat"]
    assert p.text == "white horse red car beach t-shirt"


def test_parse_unterminated_quote_and_spacing():
    p = parse_query('+"white   horse')
    assert p.must == ["white horse"] and p.text == "white horse"


@pytest.mark.parametrize("text", ["", "   ", '""', "+ - ,", "..."])
def test_empty_query_is_a_usage_error(text):
    with pytest.raises(UsageError, match="empty"):
        parse_query(text)


def test_only_excludes_is_a_usage_error():
    with pytest.raises(UsageError, match="only excludes"):
        parse_query("-night -car")


def test_text_that_is_not_utf8_or_too_long_is_a_usage_error():
    from lexsearch.limits import MAX_QUERY_CHARS

    latin1 = b"caf\xe9 green".decode("utf-8", "surrogateescape")  # as Python holds a Latin-1 argument
    with pytest.raises(UsageError, match=re.escape("not UTF-8 text (caf\\xe9 green)")):
        parse_query(latin1)
    assert parse_query("x" * MAX_QUERY_CHARS).text == "x" * MAX_QUERY_CHARS
    with pytest.raises(UsageError, match=f"{MAX_QUERY_CHARS + 1} characters long"):
        parse_query("x" * (MAX_QUERY_CHARS + 1))


def test_a_heatmap_word_is_one_column_or_a_clear_refusal():
    from lexsearch.search.explain import heatmap_columns

    pieces = {"skateboard": [5, 6], "horse": [1], "Horse": [1]}
    names = {1: "horse", 5: "skate", 6: "##board"}

    def word_terms(word):
        return pieces.get(word, [])

    def words(cols):
        return [names[c] for c in cols]

    entries = {"horse": 1, "skate": 5, "##board": 6}
    assert heatmap_columns("horse", word_terms, words, entries) == [1]
    assert heatmap_columns("Horse", word_terms, words, entries) == [1]
    assert heatmap_columns("##board", word_terms, words, entries) == [6]  # a piece as explanations show it
    with pytest.raises(
        UsageError, match=r"'skateboard' is not one vocabulary word \(pieces: skate, ##board\)"
    ):
        heatmap_columns("skateboard", word_terms, words, entries)
    with pytest.raises(UsageError, match="'zebra' is not in the model's vocabulary"):
        heatmap_columns("zebra", word_terms, words, entries)


def test_operators_map_through_word_terms():
    enc = BagEncoder()
    f = resolve_operators(parse_query('horse +beach -skateboard -"red car"'), enc.word_terms)
    assert [c.terms for c in f.must] == [(COL["beach"],)]
    assert [c.terms for c in f.exclude] == [(COL["skate"], COL["##board"]), (COL["car"], COL["red"])]


def test_unknown_must_word_is_an_error_unknown_exclude_is_ignored(caplog):
    enc = BagEncoder()
    with pytest.raises(UsageError, match="zebra"):
        resolve_operators(parse_query("horse +zebra"), enc.word_terms)
    f = resolve_operators(parse_query("horse -zebra"), enc.word_terms)
    assert not f.exclude and "zebra" in caplog.text


# ------------------------------------------------------------------------------------------- search
def test_search_ranks_by_exact_score_and_explains_it(col):
    enc = BagEncoder()
    res = search(col, enc, "white horse", top=10, explain_words=-1, expand=True)
    q = enc.encode_texts(["white horse"]).sparse.toarray()[0]
    q = q.astype(np.float16).astype(np.float32)  # encode_query rounds like the cache stores
    expect = sorted(
        ((exact_score(col, i, q), i) for i in IMAGES if exact_score(col, i, q) > 0),
        key=lambda si: (-si[0], si[1]),
    )
    assert [r.image_id for r in res] == [i for _, i in expect]
    for r, (score, _) in zip(res, expect):
        assert r.lexical == pytest.approx(score, rel=1e-5) and r.score == pytest.approx(r.lexical)
        # The explanation is the score's exact per-word decomposition.
        assert sum(w for _, w in r.words) + r.rest == pytest.approx(r.lexical, rel=1e-5)
        assert r.rest == 0.0
    assert [r.rank for r in res] == list(range(1, len(res) + 1))
    assert res[0].path == f"/photos/{res[0].image_id:03d}.jpg"


def test_pieces_of_one_word_merge_in_explanations(col):
    res = search(col, BagEncoder(), "horse", top=10, explain_words=-1)
    by_id = {r.image_id: r for r in res}
    # Image 8 only has "Horse"/"##horse" pieces; the query lights "horse" (and "sky"): no shared piece.
    assert 8 not in by_id
    merged = merge_words(["Horse", "##horse", "horse", "sky"], [0.2, 0.1, 0.3, 0.05])
    assert merged[0][0] == "horse" and merged[0][1] == pytest.approx(0.6) and merged[1] == ("sky", 0.05)


def test_shown_words_plus_rest_equal_lexical(col):
    res = search(col, BagEncoder(), "white horse beach sky", top=3, explain_words=1)
    for r in res:
        assert len(r.words) == 1
        assert r.words[0][1] + r.rest == pytest.approx(r.lexical, rel=1e-5)


def test_must_filter_is_exact(col):
    res = search(col, BagEncoder(), "horse +beach", top=10)
    assert {r.image_id for r in res} == {1, 3}  # exactly the images holding "beach" that share a word


def test_must_phrase_needs_every_word(col):
    res = search(col, BagEncoder(), '+"white horse"', top=10)
    # Image 8 holds "white" and "Horse": case does not count, so it has every word of the phrase.
    assert {r.image_id for r in res} == {1, 2, 8}


def test_exclude_filter_is_exact(col):
    ids = {r.image_id for r in search(col, BagEncoder(), "white horse -night", top=10)}
    sharing = {i for i, ws in IMAGES.items() if {"white", "horse"} & set(ws)}
    assert ids == {i for i in sharing if "night" not in IMAGES[i]}  # exactly: only the night image goes


def test_exclude_multi_piece_word_needs_all_pieces(col):
    ids = {r.image_id for r in search(col, BagEncoder(), "horse -skateboard", top=10)}
    assert 6 not in ids and 7 in ids  # 7 has "skate" but not "##board": it is not a skateboard


def test_a_match_must_hold_a_word_of_the_query(col):
    # The query lights "sky" too (an association). Image 5 shares only "sky": not a match, unless expanded.
    plain = {r.image_id for r in search(col, BagEncoder(), "white horse", top=10)}
    expanded = {r.image_id for r in search(col, BagEncoder(), "white horse", top=10, expand=True)}
    assert plain == {1, 2, 3, 6, 7, 8} and expanded == plain | {5}
    # "dog" is a word of image 5: there it is a match, ranked by the full score (dog + sky).
    assert [r.image_id for r in search(col, BagEncoder(), "dog", top=10)] == [5]


def test_no_shared_word_is_an_honest_empty_result(col):
    assert search(col, BagEncoder(), "zebra giraffe", top=10) == []  # lights no word at all
    col2 = MemoryCollection({1: {"red": 1.0, "car": 1.0}, 2: {"dog": 1.0}})
    assert search(col2, BagEncoder(), "horse", top=10) == []  # lights horse + sky: nobody has them
    assert search(col, BagEncoder(), "dog -sky", top=10) == []  # the filter removes every sharer


def test_min_score_and_top(col):
    all_res = search(col, BagEncoder(), "white horse", top=10)
    cut = (all_res[1].score + all_res[2].score) / 2
    res = search(col, BagEncoder(), "white horse", top=10, min_score=cut)
    assert [r.image_id for r in res] == [r.image_id for r in all_res[:2]]
    assert len(search(col, BagEncoder(), "white horse", top=1)) == 1
    with pytest.raises(UsageError):
        search(col, BagEncoder(), "white horse", top=0)


def test_no_rerank_scores_the_strongest_terms_and_explains_them(col):
    res = search(
        col, BagEncoder(), "white horse", top=10, rerank_candidates=False, query_terms=1, explain_words=-1
    )
    assert res  # only the strongest term (white or horse) is scored
    for r in res:
        assert len(r.words) == 1 and r.words[0][1] == pytest.approx(r.lexical, rel=1e-5)


def test_query_cache_skips_the_encoder(col):
    enc = BagEncoder()
    first = search(col, enc, "white horse +beach", top=5)
    assert enc.text_calls == 1 and "white horse beach" in col.cache
    second = search(col, enc, "white horse +beach", top=5)
    assert enc.text_calls == 1
    assert [(r.image_id, r.score) for r in first] == [(r.image_id, r.score) for r in second]


def test_dense_fusion_uses_the_weight():
    enc = BagEncoder(dense_dim=4)
    rng = np.random.default_rng(0)
    dense = {
        i: (v / np.linalg.norm(v)).astype(np.float32)
        for i, v in ((i, rng.standard_normal(4)) for i in IMAGES)
    }
    col = MemoryCollection(IMAGES, dense)
    res = search(col, enc, "white horse", top=10, dense_weight=0.4)
    for r in res:
        assert r.dense is not None and r.lexical > 0
        assert r.score == pytest.approx(0.6 * r.lexical + 0.4 * r.dense, rel=1e-5, abs=1e-6)
    assert [r.score for r in res] == sorted((r.score for r in res), reverse=True)
    # Weight 0: pure lexical ranking, no dense score reported.
    assert all(r.dense is None for r in search(col, enc, "white horse", top=10, dense_weight=0))


def test_search_by_image_dense_and_lexical_fallback(col):
    enc = BagEncoder(dense_dim=4)
    dense = {i: enc.encode_images([list(ws)]).dense[0] for i, ws in IMAGES.items()}
    dcol = MemoryCollection(IMAGES, dense)
    res = search_by_image(dcol, enc, ["white", "horse", "beach", "sky"], top=3)
    assert res[0].image_id == 1 and res[0].score == pytest.approx(1.0, abs=1e-4)
    assert {w for w, _ in res[0].words} >= {"white", "horse", "beach"}
    lex = search_by_image(col, BagEncoder(), ["red", "car"], top=3)  # no dense head: lexical search
    assert lex[0].image_id == 4 and lex[0].score == pytest.approx(lex[0].lexical)


# ------------------------------------------------------------------------------------------- kernels
def random_collection(n: int, vocab: int, per_image: int, seed: int) -> sp.csc_matrix:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1)
    p /= p.sum()
    rows, cols = [], []
    for i in range(1, n):  # id 0 unused, as in a collection
        t = np.unique(rng.choice(vocab, per_image, p=p))
        rows.append(np.full(t.size, i))
        cols.append(t)
    r, c = np.concatenate(rows), np.concatenate(cols)
    w = rng.lognormal(0, 0.7, r.size).astype(np.float32)
    m = sp.csr_matrix((w, (r, c)), shape=(n, vocab), dtype=np.float32)
    norms = np.sqrt(np.asarray(m.multiply(m).sum(1)).ravel())
    norms[norms == 0] = 1
    return sp.csc_matrix(sp.diags(1 / norms) @ m, dtype=np.float32)


@pytest.fixture(scope="module")
def synthetic():
    x = random_collection(3000, 400, 40, seed=0)
    rng = np.random.default_rng(1)
    queries = []
    for _ in range(5):
        t = rng.choice(400, 12, replace=False, p=(1 / np.arange(1, 401)) / (1 / np.arange(1, 401)).sum())
        w = np.sort(rng.lognormal(0, 1, 12))[::-1].astype(np.float32)
        queries.append((t.astype(np.intp), w / np.linalg.norm(w)))
    return x, queries


@pytest.mark.parametrize("dense_fraction", [0.0, 0.2, 1.1])  # all dense columns, mixed, all sparse
def test_accumulate_equals_brute_force(synthetic, dense_fraction):
    x, queries = synthetic
    index = PostingsIndex.from_csc(x, dense_min_fraction=dense_fraction)
    for terms, w in queries:
        q = query_vector(terms, w, x.shape[1])
        np.testing.assert_allclose(accumulate(index, terms, w), x @ q, rtol=1e-5, atol=1e-7)
        cands = candidates(index, terms, w, k=100)
        brute = x @ q
        order = np.lexsort((np.arange(brute.size), -brute))[:100]
        assert cands.ids.tolist() == order.tolist()


def test_dense_columns_are_added_block_by_block_to_the_very_floats_of_one_pass(synthetic, monkeypatch):
    from lexsearch.search import candidates as cand

    x, queries = synthetic
    index = PostingsIndex.from_csc(x, dense_min_fraction=0.0)  # every term a dense column
    terms, w = queries[0]
    index.get(terms.tolist())
    index.begin_query()
    postings = index.get(terms.tolist())  # converted on their second use
    pairs = [(postings[t], np.float32(q)) for t, q in zip(terms.tolist(), w.tolist()) if t in postings]
    assert len(pairs) > 3 and all(tp.dense is not None for tp, _ in pairs)
    expected = pairs[0][0].dense * pairs[0][1]
    for tp, q in pairs[1:]:
        expected = expected + tp.dense * q  # term at a time over every id, in the query's order
    for block in (256, 1000, x.shape[0] - 1, 1 << 16):  # several blocks, a short last one, a single block
        monkeypatch.setattr(cand, "BLOCK", block)
        got = cand._accumulate(index, pairs)
        assert np.array_equal(got, expected), block


def test_top_k_matches_argsort_with_ties():
    rng = np.random.default_rng(3)
    scores = np.round(rng.random(200_000), 3).astype(np.float32)  # many ties
    scores[rng.random(scores.size) < 0.5] = 0
    got = top_k(scores, 1000)
    order = np.lexsort((np.arange(scores.size), -scores))[:1000]
    assert got.ids.tolist() == order.tolist()
    assert top_k(np.zeros(10, np.float32), 5).ids.size == 0
    few = np.zeros(100_000, np.float32)
    few[[5, 7]] = [0.2, 0.3]
    assert top_k(few, 1000).ids.tolist() == [7, 5]


def test_filters_on_the_kernel_level(synthetic):
    x, queries = synthetic
    index = PostingsIndex.from_csc(x, dense_min_fraction=0.2)
    terms, w = queries[0]
    must_t, excl_t = int(terms[3]), int(terms[0])
    filters = Filters(must=[Clause("m", (must_t,))], exclude=[Clause("e", (excl_t,))])
    got = set(candidates(index, terms, w, filters, k=10**6).ids.tolist())
    brute = x @ query_vector(terms, w, x.shape[1])
    has = lambda t: set(x[:, t].nonzero()[0].tolist())
    expect = (set(np.flatnonzero(brute > 0).tolist()) & has(must_t)) - has(excl_t)
    assert got == expect


def test_pruned_candidates_overlap_exact(synthetic):
    x = random_collection(20_000, 2000, 60, seed=5)
    index = PostingsIndex.from_csc(x)
    rng = np.random.default_rng(2)
    p = 1 / np.arange(1, 2001)
    overlaps = []
    for _ in range(5):
        terms = rng.choice(2000, 24, replace=False, p=p / p.sum()).astype(np.intp)
        w = np.sort(rng.lognormal(0, 1, 24))[::-1].astype(np.float32)
        w /= np.linalg.norm(w)
        q = query_vector(terms, w, x.shape[1])
        exact = candidates(index, terms, w, k=200)
        prune = PruneConfig(max_terms=12, cap_fraction=0.1, pool=2.0)
        pool = candidates(index, terms, w, k=200, prune=prune)
        assert pool.ids.size <= 400
        ranked = rerank(ForwardRows.from_csr(x.tocsr(), pool.ids), q)
        overlaps.append(len(set(ranked.ids[:200].tolist()) & set(exact.ids.tolist())) / 200)
    assert np.mean(overlaps) >= 0.95, overlaps


def test_forward_rows_and_lexical_scores():
    rows = ForwardRows.from_mapping(
        [3, 9, 4],
        {
            3: (np.array([0, 2], np.int32), np.array([0.5, 0.5], np.float32)),
            4: (np.array([1], np.int32), np.array([1.0], np.float32)),
        },
    )
    q = np.array([1.0, 2.0, 3.0], np.float32)
    np.testing.assert_allclose(lexical_scores(rows, q), [2.0, 0.0, 2.0])  # 9 was deleted: empty row
    ranked = rerank(rows, q)
    assert ranked.ids.tolist() == [3, 4]  # zero lexical dropped, ties by id


# ------------------------------------------------------------------------------------------- outputs
def sample_results():
    return [
        Result(1, 7, "/p/a b.jpg", 0.51234567, 0.5, None, [("horse", 0.3), ("white", 0.2)], 0.0123),
        Result(2, 3, "/p/c.jpg", 0.25, 0.25, None, [("horse", 0.25)], 0.0),
    ]


def test_json_output_shape():
    out = results_to_json(sample_results())
    assert json.loads(json.dumps(out)) == out
    assert out[0]["rank"] == 1 and out[0]["path"] == "/p/a b.jpg" and out[0]["score"] == 0.512346
    assert out[0]["words"] == [{"word": "horse", "weight": 0.3}, {"word": "white", "weight": 0.2}]
    assert results_to_json([]) == []


def test_paths_and_table_output():
    assert format_paths(sample_results()) == "/p/a b.jpg\n/p/c.jpg\n"
    assert format_paths([]) == ""
    table = format_table(sample_results())
    assert "/p/a b.jpg" in table and "horse 0.300, white 0.200 (+0.012 more)" in table
    assert table.splitlines()[1].split()[:2] == ["1", "0.512"]


# ------------------------------------------------------------------------------------------- CLI
def _index(tiny_model_dir, tmp_path):
    from click.testing import CliRunner
    from fakes import make_images

    from lexsearch.cli import cli

    make_images(tmp_path / "photos", 6)
    col = str(tmp_path / "col")
    res = CliRunner().invoke(
        cli,
        [
            "index",
            str(tmp_path / "photos"),
            "--model",
            str(tiny_model_dir),
            "--collection",
            col,
            "--quiet",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    return col


def test_cli_query_outputs(tiny_model_dir, tmp_path):
    from click.testing import CliRunner

    from lexsearch.cli import cli

    col = _index(tiny_model_dir, tmp_path)
    runner = CliRunner()
    res = runner.invoke(cli, ["query", "a red circle", "--collection", col, "--json", "--top", "3"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert isinstance(out, list) and len(out) <= 3
    for i, r in enumerate(out, 1):
        assert set(r) >= {"rank", "path", "score", "words"} and r["rank"] == i
        assert r["path"].endswith(".png") and all(set(w) == {"word", "weight"} for w in r["words"])
    paths = runner.invoke(cli, ["query", "a red circle", "--collection", col, "--paths", "--top", "3"])
    assert paths.exit_code == 0 and paths.output.splitlines() == [r["path"] for r in out]
    table = runner.invoke(cli, ["query", "a red circle", "--collection", col, "--top", "3"])
    assert table.exit_code == 0
    assert (out[0]["path"] in table.output) if out else ("No image matches" in table.output)


def test_cli_query_errors(tiny_model_dir, tmp_path):
    from click.testing import CliRunner

    from lexsearch.cli import cli

    col = _index(tiny_model_dir, tmp_path)
    runner = CliRunner()
    for args, needle in (
        (["query", "  ", "--collection", col], "empty"),
        (["query", "-red", "--collection", col], "only excludes"),
        (["query", "red", "--collection", col, "--json", "--paths"], "pick one"),
        (["query", "--collection", col], "Nothing to search"),
        (["query", "red", "--collection", str(tmp_path / "nowhere")], "No collection"),
    ):
        res = runner.invoke(cli, args)
        assert res.exit_code != 0 and needle in res.output, (args, res.output)
        assert "Traceback" not in res.output


def test_cached_query_never_loads_the_networks(tiny_model_dir, tmp_path):
    """A repeated query is answered from the cache with the vocabulary alone: no torch, no weights."""
    import subprocess
    import sys

    from lexsearch.index.store import Collection
    from lexsearch.model.lazy import LazyEncoder
    from lexsearch.search import search

    col_path = _index(tiny_model_dir, tmp_path)
    with Collection.open(col_path, readonly=True) as c:
        first_encoder = LazyEncoder(tiny_model_dir, device="cpu")
        first = search(c, first_encoder, "a red circle +circle", top=3)
        assert first_encoder.loaded  # a new query needs the text tower
        again_encoder = LazyEncoder(tiny_model_dir, device="cpu")
        again = search(c, again_encoder, "a red circle +circle", top=3)
        assert not again_encoder.loaded
    assert [(r.path, r.score, r.words) for r in again] == [(r.path, r.score, r.words) for r in first]

    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from lexsearch.cli import cli\n"
        f"res = CliRunner().invoke(cli, ['query', 'a red circle +circle', '--collection', {str(col_path)!r}])\n"
        "assert res.exit_code == 0, res.output\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_the_query_command_ends_without_teardown_yet_loses_no_output(tiny_model_dir, tmp_path):
    """``lexsearch query`` ends with os._exit once done (no module teardown): every byte still arrives, and
    the exit codes are the command's."""
    import json
    import subprocess
    import sys

    col_path = str(_index(tiny_model_dir, tmp_path))
    run = [sys.executable, "-m", "lexsearch", "query"]
    out = subprocess.run(
        [*run, "red circle", "--collection", col_path, "--json"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)  # the whole document, flushed before the process ended
    assert rows and all("words" in r for r in rows)
    bad = subprocess.run(
        [*run, "red", "--collection", str(tmp_path / "nowhere")], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "No collection" in bad.stderr and "Traceback" not in bad.stderr
    again = subprocess.run(
        [*run, "red circle", "--collection", col_path, "--json"], capture_output=True, text=True
    )
    assert json.loads(again.stdout) == rows  # the cache entry the first one wrote was committed


def test_operators_and_query_words_ignore_case(col):
    enc = BagEncoder()
    assert {r.image_id for r in search(col, enc, "white horse -Night", top=10)} == {
        r.image_id for r in search(col, enc, "white horse -night", top=10)
    }
    assert 2 not in {r.image_id for r in search(col, enc, "white horse -NIGHT", top=10)}
    assert {r.image_id for r in search(col, enc, "horse +Beach", top=10)} == {1, 3}
    # +Horse is horse or Horse: image 8 holds only "Horse" (and "white", which the query lights).
    assert 8 in {r.image_id for r in search(col, enc, "white +Horse", top=10)}


class _TheIsAPiece(BagEncoder):
    """A vocabulary where "the" is a piece (the sky column stands in for it)."""

    def word_terms(self, word):
        return [COL["sky"]] if word.lower() == "the" else super().word_terms(word)


def test_function_words_are_no_match(col):
    # Image 1 shares only "the" (sky) with "the dog" and must not be passed off as a match; image 5 has dog.
    assert {r.image_id for r in search(col, _TheIsAPiece(), "the dog", top=10)} == {5}
    assert {r.image_id for r in search(col, _TheIsAPiece(), "dog -the", top=10)} == {5}  # -the: ignored


def test_postings_as_read_and_converted_score_alike(tmp_path):
    """A term's first query scores the store's parts in place (sparse views, dense columns, delta blobs);
    later queries use converted postings: the candidates are the same, removed images masked in both."""
    from lexsearch.index.store import Changes, Collection, NewImage
    from lexsearch.search.candidates import candidates
    from lexsearch.search.postings import PostingsIndex

    rng = np.random.default_rng(7)
    with Collection.open(tmp_path / "c", readonly=False) as col:
        col.bind_model({"model_id": "m", "vocab_hash": "v", "vocab_size": 40, "dense_dim": 0}, "x")
        col.flush_at = 300  # files (with dense columns for the common terms) and a delta
        for start in range(0, 400, 20):
            batch = []
            for i in range(start, start + 20):
                terms = np.sort(rng.choice(40, size=8, replace=False, p=np.r_[[0.1] * 5, [0.5 / 35] * 35]))
                batch.append(
                    NewImage(
                        f"/p/{i}",
                        1,
                        i,
                        f"h{i}",
                        terms=terms.astype(np.uint32),
                        weights=(rng.random(8) + 0.1).astype(np.float32),
                    )
                )
            col.apply(Changes(insert=batch))
        col.apply(Changes(remove=[5, 50, 333]))
        assert col.db.execute("SELECT count(*) FROM segments").fetchone()[0] >= 1
        snap = col.postings_snapshot(range(40))
        assert any(p.dense for parts in snap.parts.values() for p in parts)
        index = PostingsIndex.from_collection(col)
        terms = np.array([0, 1, 2, 17, 30], np.intp)
        w = np.array([0.5, 0.4, 0.3, 0.6, 0.2], np.float32)
        first = candidates(index, terms, w, k=50)
        assert all(index.get([t])[t].raw for t in terms.tolist())
        second = candidates(index, terms, w, k=50)
        # Converted, except a term stored only as uint16-coded columns: it scores from them as they lie.
        for t in terms.tolist():
            tp = index.get([t])[t]
            only_columns = all(p.dense and p.scale is not None for p in snap.parts[t])
            assert tp.raw == only_columns, t
        assert np.array_equal(first.ids, second.ids) and np.allclose(first.scores, second.scores, atol=1e-5)
        assert not {5, 50, 333} & set(first.ids.tolist())


@pytest.mark.parametrize("seed", [0, 1])
def test_filters_allowing_most_images_zero_the_rest_with_the_same_candidates(monkeypatch, seed):
    """Where the query-word clauses allow most images, the others are zeroed in place instead of listed:
    the candidates (ids, order, scores) are those of the listed-ids path."""
    import scipy.sparse as sp

    from lexsearch.search import candidates as cs
    from lexsearch.search.parse import Clause, Filters
    from lexsearch.search.postings import PostingsIndex

    rng = np.random.default_rng(seed)
    dense = (rng.random((5000, 40)) < 0.2) * rng.random((5000, 40))
    dense[:, 3] = (rng.random(5000) < 0.9) * rng.random(5000)  # a word most images have
    matrix = sp.csc_matrix(dense.astype(np.float32))
    terms, weights = np.array([3, 5, 9, 11]), np.array([0.6, 0.5, 0.4, 0.3], np.float32)
    filters = Filters(any_of=[Clause("w3", (3,)), Clause("w9", (9,))], exclude=[Clause("w5", (5,))])
    got = {}
    for share in (0.0, 2.0):  # always zero the others / always list the allowed ids
        monkeypatch.setattr(cs, "ALLOWED_AS_IDS", share)
        c = cs.candidates(PostingsIndex.from_csc(matrix), terms, weights, filters, k=300)
        got[share] = (c.ids.tolist(), c.scores.tolist())
    assert got[0.0] == got[2.0] and len(got[0.0][0]) == 300
    has = matrix[:, [3, 9]].toarray().any(axis=1) & ~(matrix[:, 5].toarray()[:, 0] > 0)
    assert has[got[0.0][0]].all()  # only allowed, not excluded images
