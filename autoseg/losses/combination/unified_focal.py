"""Asymmetric unified focal loss (Yeung et al., 2022): asymmetric focal + asymmetric focal Tversky."""

from __future__ import annotations

import torch

from autoseg.losses._functional import (
    gathered_log_probabilities,
    masked_voxel_mean,
    reduce,
    safe_pow,
    soft_region_counts,
    valid_mask,
)
from autoseg.losses._validation import check_logits_target, check_positive, check_probability, check_reduction
from autoseg.losses.base import RegionLoss
from autoseg.losses.registry import register_loss


def _check(focal_weight: float, delta: float, gamma: float) -> tuple[float, float, float]:
    return (check_probability("focal_weight", focal_weight), check_probability("delta", delta),
            check_probability("gamma", gamma))


def unified_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    focal_weight: float = 0.5,
    delta: float = 0.6,
    gamma: float = 0.5,
    ignore_index: int | None = None,
    batch: bool = False,
    smooth: float = 1e-5,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Asymmetric unified focal loss, :math:`\lambda L_{maF} + (1 - \lambda) L_{maFT}`.

    Class 0 is the background, every other class is treated as a rare (foreground) class:

    .. math::
        L_{maF} = \frac{1}{N}\sum_n \begin{cases} -(1-\delta)\,(1 - p_n^0)^\gamma \log p_n^0 & y_n = 0 \\
                  -\delta \log p_n^{y_n} & y_n \neq 0 \end{cases}, \qquad
        L_{maFT} = \frac{1}{|C|}\Big[(1 - mTI_0) + \sum_{c \neq 0} (1 - mTI_c)^{1-\gamma}\Big]

    with :math:`mTI_c = (TP_c + s) / (TP_c + \delta FN_c + (1 - \delta) FP_c + s)`: δ weighs false
    negatives (and the foreground's cross-entropy) as the paper's text and the reference code do, so
    δ > 0.5 favours recall. Yeung, Sala,
    Schönlieb, Rundo, "Unified focal loss: generalising Dice and cross entropy-based losses to
    handle class imbalanced medical image segmentation", CMIG 2022 (arXiv:2102.04525). The
    background's focal term is suppressed (focal modulation) and the foreground's focal Tversky
    term enhanced (exponent ``1 - gamma`` < 1); λ = ``focal_weight``. Defaults λ = 0.5, δ = 0.6,
    γ = 0.5 as the paper. The paper sums over classes in :math:`L_{maFT}`; like the reference code,
    autoseg averages. There is no ``include_background``: the background has its own term.

    Example:
        >>> logits = torch.tensor([[[[9.0, -9.0]], [[-9.0, 9.0]]]])
        >>> float(unified_focal_loss(logits, torch.tensor([[[0, 1]]]))) < 1e-3
        True
    """
    check_reduction(reduction)
    focal_weight, delta, gamma = _check(focal_weight, delta, gamma)
    smooth = check_positive("smooth", smooth, allow_zero=True)
    target = check_logits_target(logits, target, ignore_index)
    mask = valid_mask(target, ignore_index)
    logp, safe = gathered_log_probabilities(logits, target, mask)
    background = safe == 0
    modulation = torch.where(background, safe_pow(-torch.expm1(logp), gamma), torch.ones_like(logp))
    class_weight = torch.where(background, torch.full_like(logp, 1 - delta), torch.full_like(logp, delta))
    focal = masked_voxel_mean(-logp * modulation * class_weight, mask, reduction)
    if reduction == "none" and batch:
        focal = focal.mean().reshape(1)
    tp, fp, fn = soft_region_counts(logits, target, ignore_index, batch)
    mti = (tp + smooth) / (tp + delta * fn + (1 - delta) * fp + smooth).clamp_min(1e-8)
    ft = torch.cat([1 - mti[:, :1], safe_pow(1 - mti[:, 1:], 1 - gamma)], dim=1).mean(1)
    return focal_weight * focal + (1 - focal_weight) * reduce(ft, reduction)


@register_loss("unified_focal", category="combination", function=unified_focal_loss,
               citation="Yeung, Sala, Schonlieb, Rundo. Unified focal loss. Comput Med Imaging Graph 2022 "
                        "(arXiv:2102.04525)")
class UnifiedFocalLoss(RegionLoss):
    """Asymmetric unified focal loss: lambda * asymmetric focal + (1 - lambda) * asymmetric focal Tversky."""

    def __init__(self, focal_weight: float = 0.5, delta: float = 0.6, gamma: float = 0.5, *, batch: bool = False,
                 smooth: float = 1e-5, ignore_index: int | None = None, reduction: str = "mean"):
        # No include_background argument: the background always has its own (suppressed) terms.
        super().__init__(include_background=True, batch=batch, smooth=smooth, ignore_index=ignore_index,
                         reduction=reduction)
        self.focal_weight, self.delta, self.gamma = _check(focal_weight, delta, gamma)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return unified_focal_loss(logits, target, self.focal_weight, self.delta, self.gamma,
                                  ignore_index=self.ignore_index, batch=self.batch, smooth=self.smooth,
                                  reduction=self.reduction)
