"""Losses against values computed by hand (plain math), the lambda ramp and the temperature clamp."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lexsearch.errors import UsageError
from lexsearch.train.losses import (
    LexVLALoss,
    LogitScale,
    flops_penalty,
    get_regulariser,
    info_nce_terms,
    overuse_penalty,
    quadratic_ramp,
    symmetric_info_nce,
)


def _ce(logits: list[float], label: int) -> float:
    return -logits[label] + math.log(sum(math.exp(v) for v in logits))


def test_info_nce_matches_hand_computed_values():
    # sim[i][t] = img_i . txt_t = [[1, 0], [0.6, 0.8]]: not symmetric, so the two directions differ.
    img = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    scale = 2.0
    i2t_hand = (_ce([2.0, 0.0], 0) + _ce([1.2, 1.6], 1)) / 2  # rows: each image against both texts
    t2i_hand = (_ce([2.0, 1.2], 0) + _ce([0.0, 1.6], 1)) / 2  # columns: each text against both images
    i2t, t2i = info_nce_terms(img, txt, scale)
    assert i2t.item() == pytest.approx(i2t_hand, rel=1e-6)
    assert t2i.item() == pytest.approx(t2i_hand, rel=1e-6)
    assert symmetric_info_nce(img, txt, scale).item() == pytest.approx(i2t_hand + t2i_hand, rel=1e-6)
    assert symmetric_info_nce(img, txt, scale, "mean").item() == pytest.approx((i2t_hand + t2i_hand) / 2)
    with pytest.raises(UsageError):
        symmetric_info_nce(img, txt, scale, "max")
    with pytest.raises(UsageError):
        info_nce_terms(img, txt[:1], scale)


def test_info_nce_of_a_larger_batch_against_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.random((5, 7)), rng.random((5, 7))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    logits = 10.0 * a @ b.T
    lse_rows = np.log(np.exp(logits).sum(1))
    lse_cols = np.log(np.exp(logits).sum(0))
    diag = np.diag(logits)
    expected = (lse_rows - diag).mean() + (lse_cols - diag).mean()
    got = symmetric_info_nce(torch.tensor(a), torch.tensor(b), 10.0).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_overuse_and_flops_by_hand():
    s = torch.tensor([[0.6, 0.8, 0.0], [0.0, 0.6, 0.8]])
    # m = column means = [0.3, 0.7, 0.4]; V = 3
    m3 = 0.3**3 + 0.7**3 + 0.4**3  # 0.434
    assert overuse_penalty(s).item() == pytest.approx(3 * m3 / 1.4, rel=1e-6)
    assert flops_penalty(s).item() == pytest.approx(0.09 + 0.49 + 0.16, rel=1e-6)
    # The paper's second form: N V sum_j (sum_i s_ij / N)^3 / sum_ij s_ij.
    n, v = 2, 3
    col = [0.6, 1.4, 0.8]
    second = n * v * sum((c / n) ** 3 for c in col) / sum(col)
    assert overuse_penalty(s).item() == pytest.approx(second, rel=1e-6)
    assert get_regulariser("overuse") is overuse_penalty and get_regulariser("flops") is flops_penalty
    with pytest.raises(UsageError):
        get_regulariser("l1")


def test_overuse_is_one_for_evenly_spread_vectors_and_punishes_a_shared_word():
    v = 50
    even = torch.full((4, v), 1 / math.sqrt(v))
    assert overuse_penalty(even).item() == pytest.approx(1.0, rel=1e-5)
    # Same FLOPs-like mass, but every row puts most of its weight on word 0: overuse grows cubically.
    shared = torch.zeros(4, v)
    shared[:, 0] = 0.8
    shared[torch.arange(4), torch.arange(1, 5)] = 0.6
    assert overuse_penalty(shared).item() > 10 * overuse_penalty(even).item()
    assert overuse_penalty(torch.zeros(3, v)).item() == 0.0  # no 0/0


def test_quadratic_ramp():
    lam = 1e-3
    assert quadratic_ramp(0, lam) == 0.0
    assert quadratic_ramp(500, lam) == pytest.approx(lam / 16)
    assert quadratic_ramp(1000, lam) == pytest.approx(lam / 4)
    assert quadratic_ramp(2000, lam) == pytest.approx(lam)
    assert quadratic_ramp(10_000, lam) == pytest.approx(lam)
    assert quadratic_ramp(10, lam, ramp_steps=20) == pytest.approx(lam / 4)
    assert quadratic_ramp(0, lam, ramp_steps=0) == lam
    assert quadratic_ramp(-5, lam) == 0.0


def test_logit_scale_init_and_clamp():
    ls = LogitScale()
    assert ls().item() == pytest.approx(1 / 0.07, rel=1e-6)
    assert ls.temperature == pytest.approx(0.07, rel=1e-6)
    with torch.no_grad():
        ls.log_scale.fill_(math.log(1000.0))
    assert ls().item() == pytest.approx(100.0, rel=1e-6)  # forward never exceeds the ceiling
    ls.clamp_()
    assert ls.log_scale.item() == pytest.approx(math.log(100.0), rel=1e-6)  # nor does the parameter
    with torch.no_grad():
        ls.log_scale.fill_(-3.0)
    ls.clamp_()
    assert ls().item() == pytest.approx(1.0)  # CLIP's lower bound: scale >= 1
    with pytest.raises(UsageError):
        LogitScale(init_temperature=0.0)


def test_temperature_learns_below_the_ceiling():
    ls = LogitScale()
    img = torch.eye(3)
    txt = torch.eye(3)
    symmetric_info_nce(img, txt, ls()).backward()
    # Perfectly matched pairs: a sharper softmax lowers the loss, so the gradient asks for a larger scale.
    assert ls.log_scale.grad is not None and ls.log_scale.grad.item() < 0


def test_lexvla_loss_combines_the_parts():
    torch.manual_seed(0)
    s_img = torch.rand(6, 11, requires_grad=True)
    s_txt = torch.rand(6, 11, requires_grad=True)
    img_n = s_img / s_img.norm(dim=1, keepdim=True)
    txt_n = s_txt / s_txt.norm(dim=1, keepdim=True)
    loss = LexVLALoss(regulariser="overuse", lambda_img=0.5, lambda_txt=2.0, ramp_steps=100)
    out = loss(img_n, txt_n, step=50)
    assert out.lambda_img == pytest.approx(0.5 / 4) and out.lambda_txt == pytest.approx(2.0 / 4)
    expected = (
        symmetric_info_nce(img_n, txt_n, 1 / 0.07)
        + 0.125 * overuse_penalty(img_n)
        + 0.5 * overuse_penalty(txt_n)
    )
    assert out.total.item() == pytest.approx(expected.item(), rel=1e-5)
    out.total.backward()
    assert loss.logit_scale.log_scale.grad is not None
    assert s_img.grad is not None and s_txt.grad is not None
    flops = LexVLALoss(regulariser="flops")(img_n.detach(), txt_n.detach(), step=0)
    assert flops.reg_img.item() == pytest.approx(flops_penalty(img_n).item(), rel=1e-6)
    assert flops.lambda_img == 0.0
    with pytest.raises(UsageError):
        LexVLALoss(regulariser="nope")
