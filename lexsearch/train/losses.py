"""LexVLA training losses: symmetric InfoNCE with a learnable temperature and the lexical regularisers.

References:
- Li et al., "Unified Lexical Representation for Interpretable Visual-Language Alignment", NeurIPS 2024
  (arXiv 2407.17827), Sec. 3: ``L = InfoNCE(t2i) + InfoNCE(i2t) + lambda_I overuse(S_img) + lambda_T
  overuse(S_txt)``, lambdas ramped quadratically over the first 2,000 steps.
- Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (CLIP), ICML 2021:
  learnable logit scale initialised to 1/0.07 and clamped at 100.
- Paria et al., "Minimizing FLOPs to Learn Efficient Sparse Representations", ICLR 2020: the FLOPs
  regulariser ``sum_j m_j^2``, the paper's Q(FLOPs) ablation here.

Every loss is a pure function of already-gathered matrices (rows = samples of the *global* batch), so the
training loop can all-gather features across ranks first and call the same code on one process or many.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lexsearch.errors import UsageError

logger = logging.getLogger(__name__)

INIT_TEMPERATURE = 0.07  # [paper] (as CLIP)
MAX_LOGIT_SCALE = 100.0  # [paper] (as CLIP): 1/temperature never exceeds 100
LAMBDA_IMG = 5e-4  # [paper] lambda_I
LAMBDA_TXT = 1e-3  # [paper] lambda_T
RAMP_STEPS = 2000  # [paper] quadratic warm-up of the lambdas


class LogitScale(nn.Module):
    """Learnable ``1 / temperature``, stored as a log so it stays positive; clamped at ``max_scale``.

    The forward clamps the value used in the loss; call :meth:`clamp_` after each optimizer step (as
    open_clip does) so the parameter itself cannot drift above the ceiling, where the clamp would zero its
    gradient and Adam's momentum could keep it stuck.
    """

    def __init__(
        self, init_temperature: float = INIT_TEMPERATURE, max_scale: float = MAX_LOGIT_SCALE
    ) -> None:
        super().__init__()
        if init_temperature <= 0 or max_scale <= 0:
            raise UsageError("temperature and maximum logit scale must be positive")
        self.max_scale = float(max_scale)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature), dtype=torch.float32))

    def forward(self) -> Tensor:
        """The scale to multiply cosine similarities by, a 0-d tensor in (0, max_scale]."""
        return self.log_scale.clamp(max=math.log(self.max_scale)).exp()

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp the parameter in place to ``[0, log(max_scale)]`` (scale in [1, max_scale], as CLIP)."""
        self.log_scale.clamp_(0.0, math.log(self.max_scale))

    @property
    def temperature(self) -> float:
        """Current temperature ``1 / scale`` (for logs)."""
        return 1.0 / float(self.forward().detach())

    def extra_repr(self) -> str:
        return f"scale={float(self.forward().detach()):.3f}, max_scale={self.max_scale}"


def info_nce_terms(img: Tensor, txt: Tensor, logit_scale: Tensor | float) -> tuple[Tensor, Tensor]:
    """The two InfoNCE directions ``(i2t, t2i)`` over a batch whose row i of ``img`` matches row i of ``txt``.

    img, txt: (N, D) features, already L2-normalised (LexVLA's lexical vectors are), gathered over all ranks.
    i2t is the mean cross-entropy of each image against all N texts; t2i of each text against all N images.
    """
    if img.ndim != 2 or img.shape != txt.shape:
        raise UsageError(
            f"InfoNCE needs two (N, D) matrices of one shape, got {tuple(img.shape)}, {tuple(txt.shape)}"
        )
    # float32 logits: under bf16 autocast the softmax over a large batch would lose the small differences.
    logits = logit_scale * (img.float() @ txt.float().T)  # (N, N), row = image, column = text
    labels = torch.arange(img.shape[0], device=img.device)
    return F.cross_entropy(logits, labels), F.cross_entropy(logits.T, labels)


def symmetric_info_nce(
    img: Tensor, txt: Tensor, logit_scale: Tensor | float, reduction: str = "sum"
) -> Tensor:
    """``InfoNCE(i2t) + InfoNCE(t2i)`` as in the paper (``reduction="sum"``), or their mean as in CLIP."""
    i2t, t2i = info_nce_terms(img, txt, logit_scale)
    if reduction == "sum":
        return i2t + t2i
    if reduction == "mean":
        return (i2t + t2i) / 2
    raise UsageError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def overuse_penalty(s: Tensor) -> Tensor:
    """The paper's overuse penalty ``V * sum_j m_j^3 / sum_j m_j`` with ``m = s.mean(0)``.

    s: (N, V) non-negative lexical vectors of a batch. Equals 1 for vectors spread evenly over all words;
    a word used far more than average is punished cubically, unlike the FLOPs regulariser.
    """
    m = s.float().mean(0)  # (V,) average activation of each word over the batch
    # The floor only guards an all-zero batch (0/0); real lexical vectors are L2-normalised, so sum m ~ 1.
    return s.shape[1] * (m**3).sum() / m.sum().clamp_min(1e-12)


def flops_penalty(s: Tensor) -> Tensor:
    """The FLOPs regulariser ``sum_j m_j^2`` with ``m = s.mean(0)`` (Paria et al. 2020), s: (N, V)."""
    m = s.float().mean(0)
    return (m**2).sum()


REGULARISERS: dict[str, Callable[[Tensor], Tensor]] = {"overuse": overuse_penalty, "flops": flops_penalty}


def get_regulariser(name: str) -> Callable[[Tensor], Tensor]:
    """``overuse`` (the paper) or ``flops`` (the ablation); UsageError otherwise."""
    try:
        return REGULARISERS[name]
    except KeyError:
        raise UsageError(f"unknown regulariser {name!r}; choose one of {', '.join(REGULARISERS)}") from None


def quadratic_ramp(step: int, lam: float, ramp_steps: int = RAMP_STEPS) -> float:
    """``lam * min(1, step / ramp_steps)^2``: 0 at step 0, ``lam`` from ``ramp_steps`` on [paper].

    The regulariser starts at zero so InfoNCE can first align the two sides; ``ramp_steps <= 0`` disables
    the ramp.
    """
    if ramp_steps <= 0:
        return float(lam)
    return float(lam) * min(1.0, max(0, step) / ramp_steps) ** 2


@dataclass
class LossOutput:
    """One step's loss and its parts (floats for logging come from ``.item()`` on these)."""

    total: Tensor
    i2t: Tensor
    t2i: Tensor
    reg_img: Tensor  # the regulariser value before weighting
    reg_txt: Tensor
    lambda_img: float  # the ramped weights used at this step
    lambda_txt: float
    logit_scale: Tensor


class LexVLALoss(nn.Module):
    """The paper's objective: symmetric InfoNCE plus ramped per-modality regularisers.

    Holds the learnable :class:`LogitScale` (so it is trained and checkpointed with the model). Call it on
    the global batch: ``loss(s_img, s_txt, step)`` with (N, V) lexical matrices.
    """

    def __init__(
        self,
        regulariser: str = "overuse",
        lambda_img: float = LAMBDA_IMG,
        lambda_txt: float = LAMBDA_TXT,
        ramp_steps: int = RAMP_STEPS,
        init_temperature: float = INIT_TEMPERATURE,
        max_scale: float = MAX_LOGIT_SCALE,
    ) -> None:
        super().__init__()
        self.regulariser_name = regulariser
        self.regulariser = get_regulariser(regulariser)
        self.lambda_img = lambda_img
        self.lambda_txt = lambda_txt
        self.ramp_steps = ramp_steps
        self.logit_scale = LogitScale(init_temperature, max_scale)

    def forward(self, s_img: Tensor, s_txt: Tensor, step: int) -> LossOutput:
        scale = self.logit_scale()
        i2t, t2i = info_nce_terms(s_img, s_txt, scale)
        lam_i = quadratic_ramp(step, self.lambda_img, self.ramp_steps)
        lam_t = quadratic_ramp(step, self.lambda_txt, self.ramp_steps)
        reg_img, reg_txt = self.regulariser(s_img), self.regulariser(s_txt)
        total = i2t + t2i + lam_i * reg_img + lam_t * reg_txt
        return LossOutput(total, i2t, t2i, reg_img, reg_txt, lam_i, lam_t, scale)

    def extra_repr(self) -> str:
        return (
            f"regulariser={self.regulariser_name}, lambda_img={self.lambda_img}, "
            f"lambda_txt={self.lambda_txt}, ramp_steps={self.ramp_steps}"
        )
