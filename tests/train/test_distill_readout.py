"""The student reproduces the model's own text vector when the read-out has a text head, a calibration and
restricted columns: the export's folded output layer, fed the teacher's LM state, gives the model's s_txt
(zero outside the columns), and a distillation of such a model writes a student that loads and answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.model.test_gemma import _gemma_checkpoint

TEXTS = ["a red circle", "a small green triangle", "blue square on the left", "Purple star!"]


@pytest.fixture(scope="module")
def headed_dir(tmp_path_factory):
    """A tiny random Gemma-architecture model with a non-zero text head, calibration 0.5, a dense head, the
    read-out restricted to 40 columns and the prompt-only columns masked; saved as a checkpoint."""
    from lexsearch.model.checkpoint import load_checkpoint, save_checkpoint

    out = tmp_path_factory.mktemp("headed-gemma")
    _gemma_checkpoint(out, config={"dense_dim": 8, "text_head_rank": 4, "text_calibration": 0.5})
    model = load_checkpoint(out)
    torch.manual_seed(0)
    with torch.no_grad():
        model.text_head.up.weight.normal_(0, 0.3)  # a trained head: not the identity
    model.set_caption_words(["a", "red", "circle", "green", "triangle", "blue", "square"])
    rng = np.random.default_rng(0)
    model.set_image_columns(rng.choice(model.vocab_size, 40, replace=False).tolist())
    save_checkpoint(model, out, root=out)
    return out


@pytest.fixture
def headed(headed_dir):
    from lexsearch.model.checkpoint import load_checkpoint

    return load_checkpoint(headed_dir).eval()


def test_folded_output_layer_reproduces_the_models_text_vector(headed):
    from lexsearch.model.student import StudentConfig, StudentEncoder
    from lexsearch.train.distill import StudentNet, teacher_hidden, text_readout

    model = headed
    assert model.text_head is not None and model.text_head.up.weight.abs().sum() > 0
    assert model.config.text_calibration == 0.5 and len(model.config.image_columns) == 40
    assert (model.keep == 0).any()  # some columns masked
    ids, mask = model.tokenize(TEXTS)
    with torch.no_grad():
        s_txt, dense = model.encode_text(ids, mask)  # (B, V): what the LM path answers
    h = teacher_hidden(model, TEXTS, torch.device("cpu"))  # (B, H)
    h0 = teacher_hidden(model, [""], torch.device("cpu"))[0]
    readout = text_readout(model, h0)
    cols = model.image_cols
    # The distillation's targets are the model's own vector on its columns.
    assert (readout.lexical(h) - s_txt[:, cols]).abs().max().item() < 1e-5

    # A student whose to_hidden is some invertible P: the export folds the read-out into W_out = W P.
    width = h.shape[1]
    arch = StudentConfig(
        n_tokens=10, vocab_size=model.vocab_size, width=width, layers=1, heads=2, dense_dim=8
    )
    torch.manual_seed(1)
    net = StudentNet(arch, width)
    with torch.no_grad():
        net.to_hidden.weight.copy_(torch.eye(width) + 0.1 * torch.randn(width, width))
    weights = net.export(readout, model.dense_txt)
    assert weights["out.weight"].shape == (40, width)
    np.testing.assert_array_equal(weights["out.columns"], cols.numpy())
    student = StudentEncoder(arch, weights, backend=None, record={})
    student.keep = model.keep.numpy()
    # The CLS read-out c that the trained student would produce for h exactly: P c + p = h.
    p_w, p_b = net.to_hidden.weight.detach().double(), net.to_hidden.bias.detach().double()
    c = torch.linalg.solve(p_w, (h.double() - p_b).T).T.float().numpy()
    s = student.lexical(c @ student.w["out.weight"].T + student.w["out.bias"])
    assert s.shape == tuple(s_txt.shape)
    np.testing.assert_allclose(s, s_txt.numpy(), atol=1e-5)
    outside = np.setdiff1d(np.arange(model.vocab_size), cols.numpy())
    assert (s[:, outside] == 0).all()  # absent, not elu1p(0) = 1
    d = c @ student.w["dense.weight"].T + student.w["dense.bias"]
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    np.testing.assert_allclose(d, dense.numpy(), atol=1e-5)  # the dense side still reads the raw h


def test_a_calibrated_readout_needs_the_empty_texts_state(headed):
    from lexsearch.train.distill import text_readout

    with pytest.raises(ValueError, match="empty text"):
        text_readout(headed, None)


def test_distill_of_a_headed_model_writes_a_student_on_its_columns(headed_dir, tmp_path):
    import shutil

    from lexsearch.model.lazy import LazyEncoder
    from lexsearch.train.distill import DistillConfig, distill

    model_dir = tmp_path / "model"
    shutil.copytree(headed_dir, model_dir)
    captions = TEXTS * 4
    distill(model_dir, captions, DistillConfig(minutes=0.05, max_steps=3, variants=2, device="cpu", width=32))
    enc = LazyEncoder(model_dir, device="cpu", text_encoder="student")
    out = enc.encode_texts(["a red circle", "green square"], sparsify="none")
    cols = set(enc.config.image_columns)
    assert out.sparse.shape == (2, enc.vocab_size)
    assert set(out.sparse.indices.tolist()) <= cols and out.sparse.nnz > 0
