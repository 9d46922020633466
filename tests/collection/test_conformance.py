"""The same query set against both homes of a collection: the embedded store and Qdrant (its in-process
engine, files under a temporary folder). Same images and vectors in, same answers out: paths in the same
order, scores to 1e-4, and the same per-word explanations, for every query form and option.

Image ids differ by design (the store numbers images, Qdrant hashes paths) and are not compared.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("qdrant_client")

from lexsearch.collection import open_collection  # noqa: E402
from lexsearch.collection.qdrant import points as pt  # noqa: E402
from lexsearch.collection.qdrant.build import _vectors  # noqa: E402
from lexsearch.collection.qdrant.store import QdrantCollection  # noqa: E402
from lexsearch.index.store import Changes, NewImage  # noqa: E402
from lexsearch.search import PruneConfig, search, search_by_image  # noqa: E402

# A vocabulary with word pieces (skate + ##board), case variants and function words, like a tokenizer's.
WORDS = (
    "horse white black beach night car red dog grass sky skate ##board Horse cat tree water snow road "
    "house boat bird city mountain field flower blue green yellow street the a on"
).split()
COL = {w: i for i, w in enumerate(WORDS)}
N_IMAGES = 300
DENSE_DIM = 8


class WordEncoder:
    """Texts -> L2-normalised bags of words over WORDS, with a little mass on associated words (as a real
    text tower spreads it); images are word lists. Deterministic, no torch."""

    vocab_size = len(WORDS)
    dense_dim = DENSE_DIM
    model_id = "conformance-model"
    vocab_hash = "conformance-vocab"

    def __init__(self) -> None:
        self._proj = np.random.default_rng(7).standard_normal((len(WORDS), DENSE_DIM))
        self._assoc = np.random.default_rng(8).integers(0, len(WORDS), len(WORDS))

    def word_terms(self, word: str) -> list[int]:
        if word in COL:
            return [COL[word]]
        if word == "skateboard":
            return [COL["skate"], COL["##board"]]
        return []

    def _vec(self, words: list[str]) -> np.ndarray:
        v = np.zeros(len(WORDS), np.float32)
        for w in words:
            for c in self.word_terms(w):
                v[c] += 1.0
                v[self._assoc[c]] += 0.3  # an associated word the text never said
        return v / (np.linalg.norm(v) or 1.0)

    def _encoded(self, rows: np.ndarray):
        dense = (rows @ self._proj).astype(np.float32)
        dense /= np.linalg.norm(dense, axis=1, keepdims=True) + 1e-9
        return _Encoded(sp.csr_matrix(rows), dense)

    def encode_texts(self, texts, batch_size=32):
        return self._encoded(np.stack([self._vec(re.findall(r"[\w#]+", t)) for t in texts]))

    def encode_images(self, images, batch_size=32):
        return self._encoded(np.stack([self._vec(im) for im in images]))

    def words(self, term_ids) -> list[str]:
        return [WORDS[int(t)] for t in term_ids]


class _Encoded:
    def __init__(self, sparse, dense):
        self.sparse, self.dense = sparse, dense


def _images(root) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(path, terms, weights, dense) of N_IMAGES synthetic images; each path is a real (empty) file."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(N_IMAGES):
        n = int(rng.integers(3, 9))
        terms = np.sort(rng.choice(len(WORDS), n, replace=False)).astype(np.uint32)
        weights = rng.uniform(0.05, 1.0, n).astype(np.float32)
        weights /= np.linalg.norm(weights)
        dense = rng.standard_normal(DENSE_DIM).astype(np.float32)
        dense /= np.linalg.norm(dense)
        path = root / f"img_{i:04d}.jpg"
        path.write_bytes(b"")
        out.append((str(path), terms, weights, dense))
    return out


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """(embedded collection folder, qdrant:// address) holding the same images and vectors."""
    tmp = tmp_path_factory.mktemp("conformance")
    (tmp / "photos").mkdir()
    images = _images(tmp / "photos")
    model = {"model_id": "conformance-model", "vocab_hash": "conformance-vocab", "vocab_size": len(WORDS)}
    model.update(dense_dim=DENSE_DIM, sparsify=None, model_path=None)
    emb = tmp / "embedded"
    with open_collection(emb, readonly=False) as col:
        col.bind_model(model, "rebuild")
        # Two commits and a flush: postings both in a file and in the SQLite delta, as a real store has them.
        for part in (images[:200], images[200:]):
            col.apply(
                Changes(
                    insert=[
                        NewImage(p, 0, 0, f"h{k}", 4, 3, None, terms=t, weights=w, dense=d)
                        for k, (p, t, w, d) in enumerate(part)
                    ]
                )
            )
            if part is images[:200]:
                col.flush_postings()
        col.save_dense()
    address = f"qdrant://{tmp / 'qdrant'}/photos"
    with QdrantCollection.open(address, readonly=False) as col:
        col.bind_model(model, "rebuild", [str(tmp / "photos")], WORDS)
        col.upsert(
            [
                col._models.PointStruct(
                    id=pt.point_id(p),
                    vector=_vectors(col._models, t, w, d),
                    payload=pt.image_payload(
                        p, 0, 0, f"h{k}", status="ok", width=4, height=3, terms=[int(x) for x in t]
                    ),
                )
                for k, (p, t, w, d) in enumerate(images)
            ]
        )
    return emb, address


def _answer(results) -> list[tuple]:
    return [
        (
            r.path,
            round(r.score, 4),
            round(r.lexical, 4),
            None if r.dense is None else round(r.dense, 4),
            [(w, round(x, 4)) for w, x in r.words],
            round(r.rest, 4),
        )
        for r in results
    ]


def _close(a: list[tuple], b: list[tuple]) -> None:
    """Same paths in the same order, the same words; every number within 1e-4."""
    assert [r[0] for r in a] == [r[0] for r in b]
    for ra, rb in zip(a, b):
        assert ra[1] == pytest.approx(rb[1], abs=1e-4) and ra[2] == pytest.approx(rb[2], abs=1e-4)
        assert (ra[3] is None) == (rb[3] is None)
        if ra[3] is not None:
            assert ra[3] == pytest.approx(rb[3], abs=1e-4)
        assert [w for w, _ in ra[4]] == [w for w, _ in rb[4]]
        assert [x for _, x in ra[4]] == pytest.approx([x for _, x in rb[4]], abs=1e-4)


QUERIES = [
    "horse",
    "white horse",
    "Horse on the beach",
    '"red car" night',
    "skateboard",
    "dog +grass",
    "+snow +mountain",
    "bird -sky",
    "white horse -beach -night",
    '+"blue boat" water',
    "city street -car",
    "the a on",  # only function words: no clause, nothing matches
    "zebra",  # no word of the vocabulary
]
OPTIONS = [
    {},
    {"expand": True},
    {"prune": PruneConfig()},
    {"rerank_candidates": False},
    {"dense_weight": 0.0},
    {"min_score": 0.3},
    {"top": 3},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "default")
def test_every_query_form_answers_the_same_from_both_homes(both, options):
    emb, address = both
    enc = WordEncoder()
    opts = {"top": 12, **options}
    answered = 0
    with open_collection(emb) as e, open_collection(address) as q:
        for text in QUERIES:
            a = _answer(search(e, enc, text, use_cache=False, **opts))
            b = _answer(search(q, enc, text, use_cache=False, **opts))
            _close(a, b)
            answered += bool(a)
    assert answered >= 8  # the query set really exercises ranked answers, not only empty ones


def test_image_queries_answer_the_same_from_both_homes(both):
    emb, address = both
    enc = WordEncoder()
    with open_collection(emb) as e, open_collection(address) as q:
        for image in (["horse", "beach"], ["red", "car", "night"], ["snow"]):
            a = _answer(search_by_image(e, enc, image, top=10))
            b = _answer(search_by_image(q, enc, image, top=10))
            assert a  # dense search: always some neighbours
            _close(a, b)


def test_explanations_and_metadata_read_the_same_rows(both):
    emb, address = both
    with open_collection(emb) as e, open_collection(address) as q:
        paths = sorted(e.image_paths(range(1, 40)).values())
        rows_e, rows_q = e.rows_at(paths), q.rows_at(paths)
        assert set(rows_e) == set(rows_q) == set(paths)
        fe = e.forward([rows_e[p].id for p in paths])
        fq = q.forward([rows_q[p].id for p in paths])
        for p in paths:
            te, we = fe[rows_e[p].id]
            tq, wq = fq[rows_q[p].id]
            assert te.tolist() == tq.tolist() and np.allclose(we, wq, atol=1e-6)
        me = e.metadata([rows_e[paths[0]].id], ["width", "height"])
        mq = q.metadata([rows_q[paths[0]].id], ["width", "height"])
        assert list(me.values()) == list(mq.values()) == [{"width": 4, "height": 3}]
        assert e.count() == q.count() == N_IMAGES
        assert q.words() == WORDS  # the word <-> id mapping is stored with the collection


def test_metadata_conditions_are_refused_until_photo_metadata_exists(both):
    from lexsearch.collection import Condition, Where
    from lexsearch.errors import UsageError

    emb, address = both
    where = Where((Condition("camera", "eq", "X100V"),))
    terms, weights = np.array([COL["horse"]]), np.array([1.0], np.float32)
    with open_collection(emb) as e, open_collection(address) as q:
        for col in (e, q):
            with pytest.raises(UsageError):
                col.candidates(terms, weights, where=where)
            assert col.candidates(terms, weights, where=Where()).ids.size > 0
