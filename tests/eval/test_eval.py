"""Evaluation: R@K on hand-made score matrices, mIoU on hand-made masks, the COCO reader,
the sweep plot, and both commands end to end with a fake encoder (offline, no model, a few seconds)."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp
from PIL import Image

from lexsearch.errors import DataError, ModelError, UsageError
from lexsearch.eval.patchdis import (
    CocoInstances,
    IoUAccumulator,
    PatchDisOptions,
    View,
    evaluate_patchdis,
    masks_on_grid,
    predict_labels,
)
from lexsearch.eval.report import format_patchdis, format_retrieval, to_json
from lexsearch.eval.retrieval import (
    Sparsify,
    active_dims,
    default_sweep_ks,
    evaluate_retrieval,
    plot_sweep,
    recall_at_k,
    recall_from_vectors,
    topk_rows,
)

# --------------------------------------------------------------------------------------------- R@K

# 3 images, 2 captions each. Rows = captions, columns = images.
TEXT_IMAGE = [0, 0, 1, 1, 2, 2]
SCORES = np.array(
    [
        [0.9, 0.1, 0.2],  # t0 (img 0): correct is best                     -> hit@1
        [0.3, 0.5, 0.4],  # t1 (img 0): 2 wrong images above 0.3            -> hit@3 only
        [0.2, 0.8, 0.1],  # t2 (img 1): correct is best                     -> hit@1
        [0.6, 0.6, 0.0],  # t3 (img 1): tied with img 0, tie goes against   -> hit@2
        [0.1, 0.2, 0.3],  # t4 (img 2): correct is best                     -> hit@1
        [0.5, 0.4, 0.3],  # t5 (img 2): 2 wrong above                       -> hit@3 only
    ],
    dtype=np.float32,
)
# Image -> text, by column:
#   img 0: captions t0 (0.9), t1 (0.3); best 0.9, no wrong caption >= 0.9       -> hit@1
#   img 1: captions t2 (0.8), t3 (0.6); best 0.8, no wrong caption >= 0.8       -> hit@1
#   img 2: captions t4 (0.3), t5 (0.3); best 0.3, wrong t1 (0.4) is above it    -> hit@2
EXPECTED_T2I = {1: 300 / 6, 2: 400 / 6, 3: 100.0}
EXPECTED_I2T = {1: 200 / 3, 2: 100.0, 3: 100.0}


@pytest.mark.parametrize("chunk", [1, 2, 4, 1000])
def test_recall_hand_made_several_captions_per_image(chunk):
    r = recall_at_k(SCORES, TEXT_IMAGE, ks=(1, 2, 3), chunk_size=chunk)
    assert r.t2i == pytest.approx(EXPECTED_T2I)
    assert r.i2t == pytest.approx(EXPECTED_I2T)
    assert (r.n_texts, r.n_images, r.n_images_without_caption) == (6, 3, 0)


def test_recall_from_vectors_equals_score_matrix():
    rng = np.random.default_rng(0)
    t = sp.random(40, 30, density=0.3, random_state=1, format="csr", dtype=np.float32)
    im = sp.random(9, 30, density=0.3, random_state=2, format="csr", dtype=np.float32)
    ti = rng.integers(0, 9, size=40)
    full = recall_at_k((t @ im.T).toarray(), ti, ks=(1, 5, 10))
    for chunk in (3, 64):
        blocks = recall_from_vectors(t, im, ti, ks=(1, 5, 10), chunk_size=chunk)
        assert blocks.t2i == pytest.approx(full.t2i) and blocks.i2t == pytest.approx(full.i2t)
    dense = recall_from_vectors(t.toarray(), im.toarray(), ti, ks=(1, 5, 10))
    assert dense.t2i == pytest.approx(full.t2i) and dense.i2t == pytest.approx(full.i2t)


def test_recall_matches_argsort_reference_without_ties():
    rng = np.random.default_rng(3)
    s = rng.standard_normal((50, 12)).astype(np.float32)
    ti = np.repeat(np.arange(10), 5)  # images 10 and 11 have no caption: candidates only
    r = recall_at_k(s, ti, ks=(1, 5, 10), chunk_size=7)
    order_t = np.argsort(-s, axis=1)
    order_i = np.argsort(-s.T, axis=1)
    for k in (1, 5, 10):
        ref_t2i = np.mean([ti[q] in order_t[q, :k] for q in range(50)]) * 100
        ref_i2t = np.mean([np.any(ti[order_i[i, :k]] == i) for i in range(10)]) * 100
        assert r.t2i[k] == pytest.approx(ref_t2i)
        assert r.i2t[k] == pytest.approx(ref_i2t)
    assert r.n_images_without_caption == 2


def test_all_zero_scores_are_not_rewarded():
    # A model that outputs nothing ties everywhere: ties go against it, so it only "hits" when K exceeds the
    # number of wrong candidates.
    r = recall_at_k(np.zeros((6, 3)), TEXT_IMAGE, ks=(1, 2, 3))
    assert r.t2i == {1: 0.0, 2: 0.0, 3: 100.0}
    assert r.i2t[1] == 0.0


def test_recall_rejects_bad_mapping():
    with pytest.raises(UsageError):
        recall_at_k(SCORES, [0, 0, 1], ks=(1,))
    with pytest.raises(UsageError):
        recall_at_k(SCORES, [0, 0, 1, 1, 2, 3], ks=(1,))


# ------------------------------------------------------------------------------------------ sparsify


def test_sparsify_parse_and_apply():
    assert Sparsify.parse("topk:3") == Sparsify("topk", 3)
    assert Sparsify.parse("threshold").encoder_arg() == "threshold"
    assert Sparsify.parse("topk:3").encoder_arg() == ("topk", 3)
    assert str(Sparsify.parse("NONE")) == "none"
    for bad in ("topk", "topk:0", "topk:x", "top5"):
        with pytest.raises(UsageError):
            Sparsify.parse(bad)
    x = np.array([[0.5, 0.1, 0.3, 0.0], [0.0, 0.0, 0.2, 0.9]], dtype=np.float32)
    assert topk_rows(sp.csr_matrix(x), 2).toarray() == pytest.approx(
        np.array([[0.5, 0, 0.3, 0], [0, 0, 0.2, 0.9]])
    )
    assert topk_rows(sp.csr_matrix(x), 1).toarray() == pytest.approx(
        np.array([[0.5, 0, 0, 0], [0, 0, 0, 0.9]])
    )
    # threshold 1/sqrt(4) = 0.5 keeps strictly greater values only
    assert Sparsify("threshold").apply(x).toarray() == pytest.approx(np.array([[0, 0, 0, 0], [0, 0, 0, 0.9]]))
    assert active_dims(sp.csr_matrix(x)) == 2.5
    assert default_sweep_ks(20) == [4, 8, 16, 20]
    assert default_sweep_ks(17149)[-1] == 1024


# --------------------------------------------------------------------------- fake encoder end to end

V = 12


def _raw(seed: int, hot: int) -> np.ndarray:
    """A dense positive vector with one strong word, L2-normalised (like elu1p output)."""
    v = np.random.default_rng(seed).uniform(0.01, 0.05, V).astype(np.float32)
    v[hot] = 1.0
    return v / np.linalg.norm(v)


class FakeEncoder:
    """The documented Encoder API over hand-made vectors: image n lights word n, captions mention it."""

    vocab_size = V
    grid = (2, 2)
    image_size = 4

    def _sparse(self, rows: np.ndarray, sparsify) -> types.SimpleNamespace:
        mode = Sparsify("topk", sparsify[1]) if isinstance(sparsify, tuple) else Sparsify(sparsify)
        return types.SimpleNamespace(sparse=mode.apply(rows), dense=None)

    def encode_images(self, images, batch_size=32, sparsify="threshold"):
        return self._sparse(np.stack([_raw(i, int(str(p)[-5])) for i, p in enumerate(images)]), sparsify)

    def encode_texts(self, texts, batch_size=32, sparsify="threshold"):
        return self._sparse(
            np.stack([_raw(100 + i, int(t.split()[-1])) for i, t in enumerate(texts)]), sparsify
        )

    # PatchDis: class word k is word k; a patch lights the word of its colour (red -> 0, blue -> 1).
    def encode_words(self, words, sparsify=None):
        return types.SimpleNamespace(
            sparse=sp.csr_matrix(np.eye(V, dtype=np.float32)[: len(words)]), dense=None
        )

    def encode_patches(self, image):
        # Centre square, then one pixel per patch: the real encoder's crop geometry.
        w, h = image.size
        side = min(w, h)
        box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
        small = image.convert("RGB").crop(box).resize(self.grid[::-1], Image.NEAREST)
        small = np.asarray(small, dtype=np.float32)
        out = np.zeros((4, V), dtype=np.float32)
        for p, (r, _g, b) in enumerate(small.reshape(4, 3)):
            out[p, 0 if r > b else 1] = 1.0
        return out


def test_evaluate_retrieval_with_sweep_and_plot(tmp_path):
    images = [f"img{n}.png" for n in range(4)]  # image n lights word n
    captions = ["photo of 0", "a 0", "see 1", "thing 2", "word 3", "also 3"]
    report = evaluate_retrieval(
        FakeEncoder(), images, captions, [0, 0, 1, 2, 3, 3], "threshold", sweep_ks=[1, 4, V]
    )
    assert report.recall.t2i[1] == 100.0 and report.recall.i2t[1] == 100.0
    assert report.active_dims_images == 1.0 and report.active_dims_texts == 1.0
    assert [p.k for p in report.sweep] == [1, 4, V]
    assert [p.active_dims_images for p in report.sweep] == [1.0, 4.0, float(V)]
    out = plot_sweep(report.sweep, tmp_path / "sweep.png", reference=report)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = format_retrieval(report)
    assert "R@1" in text and "image->text" in text and "top-4" in text
    assert json.loads(to_json(report.to_dict()))["i2t"]["R@1"] == 100.0


def test_encoder_without_sparsify_keyword_is_refused_for_topk():
    class Old(FakeEncoder):
        def encode_images(self, images, batch_size=32):
            return super().encode_images(images, batch_size)

    with pytest.raises(ModelError, match="sparsify"):
        evaluate_retrieval(Old(), ["img0.png"], ["a 0"], [0], "topk:2")


# ------------------------------------------------------------------------------------------- mIoU


def test_miou_hand_made_masks():
    gt = {
        0: np.array([[1, 1, 0, 0], [1, 1, 0, 0]], dtype=bool),
        1: np.array([[0, 0, 1, 1], [0, 0, 0, 0]], dtype=bool),
    }  # pixels (1, 2) and (1, 3) are unlabelled
    pred = np.array([[0, 1, 1, 1], [0, 0, 0, 1]])
    acc = IoUAccumulator(3)
    acc.update(pred, gt, ignore_unlabelled=True)
    # class 0: predicted on 3 labelled pixels, all inside its 4-pixel mask -> 3 / 4
    # class 1: predicted on 3 labelled pixels, 2 inside its 2-pixel mask  -> 2 / 3
    # class 2: never predicted nor present -> left out of the mean
    iou = acc.iou()
    assert iou[:2] == pytest.approx([75.0, 200 / 3])
    assert np.isnan(iou[2])
    assert acc.miou() == pytest.approx((75.0 + 200 / 3) / 2)

    counted = IoUAccumulator(3)
    counted.update(pred, gt, ignore_unlabelled=False)
    # The unlabelled pixels now count as false positives: class 0 gets (1, 2), class 1 gets (1, 3).
    assert counted.iou()[:2] == pytest.approx([60.0, 50.0])

    # Accumulation sums pixels over images (not a mean of per-image IoUs).
    acc.update(np.zeros((1, 2), dtype=int), {0: np.array([[1, 0]], dtype=bool)}, ignore_unlabelled=True)
    assert acc.iou()[0] == pytest.approx(100 * 4 / 5)


def test_predict_labels_upsampling():
    scores = np.zeros((2, 2, 4), dtype=np.float32)
    for c, (y, x) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        scores[y, x, c] = 1.0
    up = predict_labels(scores, (4, 6), "nearest")
    assert up.tolist() == [[0, 0, 0, 1, 1, 1]] * 2 + [[2, 2, 2, 3, 3, 3]] * 2
    assert predict_labels(scores, (4, 6), "bilinear").tolist() == up.tolist()
    assert predict_labels(scores, (4, 6), "patch").tolist() == [[0, 1], [2, 3]]
    allowed = np.array([False, True, True, False])
    assert set(np.unique(predict_labels(scores, (4, 6), "nearest", allowed))) <= {1, 2}
    masks = masks_on_grid({0: np.array([[1, 1, 0, 0]] * 4, dtype=bool)}, (2, 2))
    assert masks[0].tolist() == [[True, False], [True, False]]


def test_centre_crop_view():
    # A 4x8 image, encoder input 2: shorter side 4 -> 2 (scale 1/2), resized 2x4, crop offset 1: columns 2..5.
    v = View.centre_crop(4, 8, 2)
    assert (v.top, v.left, v.height, v.width) == (0.0, 2.0, 4.0, 4.0)
    scores = np.zeros((2, 2, 2), dtype=np.float32)
    scores[:, 0, 0] = scores[:, 1, 1] = 1.0
    for up in ("nearest", "bilinear"):
        labels = predict_labels(scores, (4, 8), up, view=v)
        assert labels.tolist() == [[-1, -1, 0, 0, 1, 1, -1, -1]] * 4
    # Patch centres sit at columns 3 and 5 of the original image.
    masks = masks_on_grid({0: np.array([[0, 0, 0, 1, 0, 0, 0, 0]] * 4, dtype=bool)}, (2, 2), v)
    assert masks[0].tolist() == [[True, False]] * 2
    # Pixels outside the crop are out of the evaluation, even where the ground truth has a class.
    acc = IoUAccumulator(2)
    acc.update(labels, {0: np.ones((4, 8), dtype=bool)})
    assert acc.iou()[0] == pytest.approx(50.0) and acc.union[0] == 16


# ---------------------------------------------------------------------------------------- COCO reader


def _coco_world(tmp_path):
    """One 4x8 image: left half red (polygon, 'redthing'), right half blue (RLE, 'bluething')."""
    from pycocotools import mask as mask_utils

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    arr = np.zeros((4, 8, 3), dtype=np.uint8)
    arr[:, :4] = (230, 20, 20)
    arr[:, 4:] = (20, 20, 230)
    Image.fromarray(arr).save(imgs / "one.png")
    right = np.zeros((4, 8), dtype=np.uint8)
    right[:, 4:] = 1
    rle = mask_utils.encode(np.asfortranarray(right))
    crowd = {"size": [4, 8], "counts": [4 * 7, 4]}  # column-major: the last column only (uncompressed RLE)
    anns = [
        {"id": 1, "image_id": 7, "category_id": 3, "iscrowd": 0, "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]},
        {
            "id": 2,
            "image_id": 7,
            "category_id": 5,
            "iscrowd": 0,
            "segmentation": {"size": [4, 8], "counts": rle["counts"].decode("ascii")},
        },
        {"id": 3, "image_id": 7, "category_id": 9, "iscrowd": 1, "segmentation": crowd},
    ]
    data = {
        "images": [
            {"id": 7, "file_name": "one.png", "height": 4, "width": 8},
            {"id": 8, "file_name": "unannotated.png", "height": 4, "width": 8},
        ],
        "annotations": anns,
        "categories": [
            {"id": 3, "name": "redthing"},
            {"id": 5, "name": "bluething"},
            {"id": 9, "name": "edge"},
        ],
    }
    f = tmp_path / "instances.json"
    f.write_text(json.dumps(data))
    return f, imgs, right.astype(bool)


def test_coco_reader_polygon_and_rle(tmp_path):
    f, imgs, right = _coco_world(tmp_path)
    coco = CocoInstances.load(f, imgs)
    assert [c for c in coco.categories] == [(3, "redthing"), (5, "bluething"), (9, "edge")]
    masks = coco.class_masks(coco.images[0])
    assert masks[5].tolist() == right.tolist()
    assert masks[3][:, :4].sum() >= 12 and not masks[3][:, 5:].any()  # the polygon covers the left half
    assert masks[9].tolist() == [[False] * 7 + [True]] * 4
    assert 9 not in coco.class_masks(coco.images[0], include_crowd=False)
    assert set(coco.class_masks(coco.images[0], category_ids=[5])) == {5}


def test_coco_reader_errors(tmp_path):
    f, imgs, _ = _coco_world(tmp_path)
    data = json.loads(f.read_text())
    with pytest.raises(DataError, match="not found"):
        CocoInstances.load(tmp_path / "missing.json", imgs)
    (imgs / "one.png").rename(imgs / "other.png")
    with pytest.raises(DataError, match="one.png"):
        CocoInstances.load(f, imgs)
    (imgs / "other.png").rename(imgs / "one.png")
    data["annotations"][0]["category_id"] = 42
    f.write_text(json.dumps(data))
    with pytest.raises(DataError, match="unknown category_id 42"):
        CocoInstances.load(f, imgs)
    f.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="'annotations'"):
        CocoInstances.load(f, imgs)


def test_evaluate_patchdis_perfect_model_beats_random(tmp_path):
    f, imgs, _ = _coco_world(tmp_path)
    coco = CocoInstances.load(f, imgs)
    opts = PatchDisOptions(classes=["redthing", "bluething"])
    report = evaluate_patchdis(FakeEncoder(), coco, opts)
    assert report.n_images == 1 and report.grid == (2, 2)
    assert report.miou == pytest.approx(100.0)
    assert report.miou_random < 100.0
    again = evaluate_patchdis(FakeEncoder(), coco, opts)
    assert again.miou_random == report.miou_random  # seeded
    for up in ("bilinear", "patch"):
        for view in ("crop", "stretch"):
            opts = PatchDisOptions(classes=["redthing", "bluething"], upsample=up, view=view)
            assert evaluate_patchdis(FakeEncoder(), coco, opts).miou == pytest.approx(100.0)
    text = format_patchdis(report)
    assert "random" in text and "redthing" in text
    with pytest.raises(UsageError, match="nosuch"):
        evaluate_patchdis(FakeEncoder(), coco, PatchDisOptions(classes=["nosuch"]))
    with pytest.raises(UsageError):
        PatchDisOptions(upsample="cubic").validate()


# ------------------------------------------------------------------------------------------------ CLI


@pytest.fixture
def fake_model(monkeypatch):
    """Route ``from lexsearch.model import Encoder`` (and ``LazyEncoder``) inside the commands to the fake."""
    module = types.ModuleType("lexsearch.model")
    module.Encoder = types.SimpleNamespace(load=lambda model_dir, device="auto": FakeEncoder())
    module.LazyEncoder = lambda model_dir, device="auto", text_encoder="auto": FakeEncoder()
    monkeypatch.setitem(sys.modules, "lexsearch.model", module)


def test_cli_eval_help():
    from click.testing import CliRunner

    from lexsearch.cli import cli

    for args in (["eval", "--help"], ["eval", "retrieval", "--help"], ["eval", "patchdis", "--help"]):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, res.output


def test_cli_retrieval_and_patchdis(tmp_path, fake_model):
    from click.testing import CliRunner

    from lexsearch.cli import cli

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    rows = [("images/img0.png", "a 0"), ("images/img1.png", "b 1"), ("images/img1.png", "c 1")]
    for name in {r[0] for r in rows}:
        Image.new("RGB", (4, 4)).save(data / name)
    (data / "captions.jsonl").write_text(
        "".join(json.dumps({"image": i, "caption": c}) + "\n" for i, c in rows)
    )
    runner = CliRunner()
    plot = tmp_path / "sweep.png"
    res = runner.invoke(
        cli,
        [
            "eval",
            "retrieval",
            "--model",
            str(tmp_path),
            "--data",
            str(data),
            "--plot",
            str(plot),
            "--sweep",
            "1,2",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["t2i"]["R@1"] == 100.0 and out["n_images"] == 2 and out["n_texts"] == 3
    assert plot.read_bytes()[:4] == b"\x89PNG"

    res = runner.invoke(
        cli, ["eval", "retrieval", "--model", str(tmp_path), "--data", str(data), "--sparsify", "top5"]
    )
    assert res.exit_code == 2 and "topk:K" in res.output

    f, imgs, _ = _coco_world(tmp_path)
    res = runner.invoke(
        cli,
        [
            "eval",
            "patchdis",
            "--model",
            str(tmp_path),
            "--images",
            str(imgs),
            "--annotations",
            str(f),
            "--classes",
            "redthing,bluething",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "model" in res.output and "random" in res.output
    res = runner.invoke(
        cli,
        [
            "eval",
            "patchdis",
            "--model",
            str(tmp_path),
            "--images",
            str(imgs),
            "--annotations",
            str(tmp_path / "nope.json"),
        ],
    )
    assert res.exit_code == 1 and "not found" in res.output
