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


CAMERAS = [("Google", "Pixel 7"), ("FUJIFILM", "X100V"), (None, None)]
SHAPES = [(4, 3), (3, 4), (4, 4)]


def _photo(i: int) -> tuple[int, int, dict]:
    """(width, height, photo metadata) of image i: dates over 2015-2024 with shared days, three cameras."""
    make, model = CAMERAS[i % 3]
    w, h = SHAPES[(i // 3) % 3]
    taken = f"{2015 + i % 10}-{1 + i % 12:02d}-{1 + i % 5:02d}T12:00:00"
    src = "exif" if make else "mtime"
    photo = {"taken": taken, "taken_offset": None, "taken_source": src, "camera_make": make}
    return w, h, {**photo, "camera_model": model, "lens": None, "gps": i % 2}


def _images(root) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(path, terms, weights, dense) of N_IMAGES synthetic images; each path is a real (empty) file, in
    ``trips/`` or ``home/``."""
    rng = np.random.default_rng(0)
    out = []
    for sub in ("trips", "home"):
        (root / sub).mkdir(exist_ok=True)
    for i in range(N_IMAGES):
        n = int(rng.integers(3, 9))
        terms = np.sort(rng.choice(len(WORDS), n, replace=False)).astype(np.uint32)
        weights = rng.uniform(0.05, 1.0, n).astype(np.float32)
        weights /= np.linalg.norm(weights)
        dense = rng.standard_normal(DENSE_DIM).astype(np.float32)
        dense /= np.linalg.norm(dense)
        path = root / ("trips" if i % 4 == 0 else "home") / f"img_{i:04d}.jpg"
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
        for start, part in ((0, images[:200]), (200, images[200:])):
            col.apply(
                Changes(
                    insert=[
                        NewImage(
                            p, 0, 0, f"h{k}", *_photo(k)[:2], None, _photo(k)[2], terms=t, weights=w, dense=d
                        )
                        for k, (p, t, w, d) in enumerate(part, start=start)
                    ]
                )
            )
            if start == 0:
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
                        p,
                        0,
                        0,
                        f"h{k}",
                        status="ok",
                        width=_photo(k)[0],
                        height=_photo(k)[1],
                        terms=[int(x) for x in t],
                        **pt.photo_payload(p, *_photo(k)),
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
        fields = ["width", "height", "taken", "taken_source", "camera_make", "camera_model", "gps"]
        me = e.metadata([rows_e[paths[0]].id], fields)
        mq = q.metadata([rows_q[paths[0]].id], fields)
        k = int(paths[0][-8:-4])  # img_0012.jpg: image 12
        w, h, photo = _photo(k)
        assert (
            list(me.values())
            == list(mq.values())
            == [{"width": w, "height": h, **{f: photo[f] for f in fields[2:]}}]
        )
        assert e.count() == q.count() == N_IMAGES
        assert q.words() == WORDS  # the word <-> id mapping is stored with the collection


def test_metadata_conditions_restrict_the_candidate_stage_of_both_homes(both):
    """``Where`` is applied before the top k is taken: k candidates that all pass, the same in both homes
    (a post-filter of the best k would keep about a third of them)."""
    from lexsearch.collection import Condition, Where

    emb, address = both
    where = Where((Condition("camera", "contains", "x100v"), Condition("taken", "gte", "2018-01-01")))
    terms, weights = np.array([COL["horse"], COL["sky"]]), np.array([1.0, 0.5], np.float32)
    with open_collection(emb) as e, open_collection(address) as q:
        found = {}
        for col in (e, q):
            ids = col.candidates(terms, weights, k=5, where=where).ids.tolist()
            meta = col.metadata(ids, ["camera_model", "taken"])
            assert len(ids) == 5 and all(m["camera_model"] == "X100V" for m in meta.values())
            assert all(m["taken"] >= "2018-01-01" for m in meta.values())
            found[col is e] = [col.image_paths([i])[i] for i in ids]
            assert col.candidates(terms, weights, where=Where()).ids.size > len(ids)
        assert found[True] == found[False]


FILTERED = [
    "horse after:2018 before:2021",
    "white horse after:2019-06",
    "horse camera:pixel",
    "beach camera:FUJI",
    "dog in:trips",
    "horse orientation:portrait",
    "sky orientation:square before:2020",
    "horse sort:date",
    "white horse sort:date-asc camera:pixel",
    "beach -night sort:date in:home",
]


@pytest.mark.parametrize("options", [{}, {"top": 3}, {"min_score": 0.3}], ids=["default", "top3", "min"])
def test_photo_filters_and_date_sort_answer_the_same_from_both_homes(both, options):
    """The metadata conditions restrict the candidate stage of both homes alike (SQL on the store's
    columns, a payload filter in Qdrant), and the date order is the same."""
    emb, address = both
    enc = WordEncoder()
    opts = {"top": 12, **options}
    with open_collection(emb) as e, open_collection(address) as q:
        for text in FILTERED:
            a = _answer(search(e, enc, text, **opts))
            b = _answer(search(q, enc, text, **opts))
            _close(a, b)
            assert a, text
            meta = e.metadata([r.image_id for r in search(e, enc, text, **opts)])
            rows = list(meta.values())
            if "after:2018" in text:
                assert all("2018-01-01" <= m["taken"] < "2021-01-01" for m in rows)
            if "camera:pixel" in text:
                assert all(m["camera_model"] == "Pixel 7" for m in rows)
            if "orientation:portrait" in text:
                assert all(m["width"] < m["height"] for m in rows)
            if "in:trips" in text:
                assert all(r[0].split("/")[-2] == "trips" for r in a)
            if "sort:date" in text:
                dates = [m["taken"] for m in (meta[r.image_id] for r in search(e, enc, text, **opts))]
                assert dates == sorted(dates, reverse="date-asc" not in text)
