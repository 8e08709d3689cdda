"""Focal loss (Lin et al., 2017): cross-entropy down-weighted on voxels that are already right."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch

from autoseg.losses._functional import gathered_log_probabilities, masked_voxel_mean, safe_pow, valid_mask
from autoseg.losses._validation import check_logits_target, check_positive, check_reduction
from autoseg.losses.base import SegmentationLoss
from autoseg.losses.registry import register_loss

Alpha = Union[float, Sequence[float], None]


def check_alpha(alpha: Alpha) -> float | list[float] | None:
    """``None``, a float in [0, 1] (foreground weight, background ``1 - alpha``) or one weight per class."""
    if alpha is None:
        return None
    if isinstance(alpha, (int, float)):
        a = float(alpha)
        if not (0 <= a <= 1):
            raise ValueError(f"alpha as a number is the foreground weight and must lie in [0, 1], got {a}")
        return a
    values = [float(x) for x in alpha]
    if any(not (x >= 0) or x == float("inf") for x in values):
        raise ValueError(f"alpha as a sequence holds one finite, non-negative weight per class, got {values}")
    return values


def _alpha_per_class(alpha: float | list[float], num_classes: int, like: torch.Tensor) -> torch.Tensor:
    if isinstance(alpha, float):
        values = [1 - alpha] + [alpha] * (num_classes - 1)
    else:
        values = alpha
        if len(values) != num_classes:
            raise ValueError(f"alpha must have one entry per class ({num_classes}), got {len(values)}")
    return torch.tensor(values, dtype=like.dtype, device=like.device)


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: Alpha = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Multi-class focal loss, averaged over the counted voxels.

    .. math:: L = -\frac{1}{N} \sum_n \alpha_{y_n} (1 - p_n^{y_n})^\gamma \log p_n^{y_n}

    Lin, Goyal, Girshick, He, Dollár, "Focal loss for dense object detection", ICCV 2017. ``gamma = 0``
    and ``alpha = None`` give cross-entropy. ``alpha`` is ``None`` (all 1), a number (the paper's
    binary α: ``alpha`` for every foreground class, ``1 - alpha`` for the background, as MONAI) or
    one weight per class. The mean is over voxels, not over summed weights as weighted ``ce``
    (the paper normalises by the number of assigned samples, not by their α).

    Example:
        >>> logits = torch.tensor([[[[2.0]], [[0.0]]]])  # p(class 0) = 0.8808
        >>> target = torch.zeros(1, 1, 1, dtype=torch.long)
        >>> round(float(focal_loss(logits, target, gamma=2.0)), 6)  # (1 - 0.8808)^2 * -log(0.8808)
        0.001804
    """
    check_reduction(reduction)
    gamma = check_positive("gamma", gamma, allow_zero=True)
    alpha = check_alpha(alpha)
    target = check_logits_target(logits, target, ignore_index)
    mask = valid_mask(target, ignore_index)
    logp, safe = gathered_log_probabilities(logits, target, mask)
    per_voxel = -logp
    if gamma != 0:
        # 1 - p computed as -expm1(log p): exact for p near 1, where 1 - exp() would round to 0;
        # safe_pow keeps the gradient finite at p = 1 when gamma < 1.
        per_voxel = per_voxel * safe_pow(-torch.expm1(logp), gamma)
    if alpha is not None:
        per_voxel = per_voxel * _alpha_per_class(alpha, logits.shape[1], logp)[safe]
    return masked_voxel_mean(per_voxel, mask, reduction)


@register_loss("focal", category="pixel", function=focal_loss,
               citation="Lin, Goyal, Girshick, He, Dollar. Focal loss for dense object detection. ICCV 2017 "
                        "(arXiv:1708.02002)")
class FocalLoss(SegmentationLoss):
    """Focal loss: -alpha_y (1 - p_y)^gamma log p_y, mean over counted voxels."""

    def __init__(self, gamma: float = 2.0, alpha: Alpha = None, *, ignore_index: int | None = None,
                 reduction: str = "mean"):
        super().__init__(ignore_index=ignore_index, reduction=reduction)
        self.gamma = check_positive("gamma", gamma, allow_zero=True)
        self.alpha = check_alpha(alpha)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_loss(logits, target, self.gamma, self.alpha, ignore_index=self.ignore_index,
                          reduction=self.reduction)
