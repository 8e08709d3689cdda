"""Soft Dice loss (Milletari et al., 2016), the linear-denominator form."""

from __future__ import annotations

import torch

from autoseg.losses._functional import (
    masked_probabilities,
    one_hot,
    probabilities,
    reduce,
    select_classes,
    soft_counts,
    valid_mask,
)
from autoseg.losses._validation import check_logits_target, check_reduction
from autoseg.losses.base import RegionLoss
from autoseg.losses.registry import register_loss


def soft_dice_per_class(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int | None = None,
    include_background: bool = False,
    batch: bool = False,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """Soft Dice coefficient ``[B, C']`` (``[1, C']`` with ``batch``), C' the classes kept.

    ``(2 TP + s) / (2 TP + FP + FN + s)`` = ``(2 sum p t + s) / (sum p + sum t + s)``: a class that is
    absent from reference and prediction scores ``s / s = 1``, never NaN.
    """
    target = check_logits_target(logits, target, ignore_index)
    if not include_background and logits.shape[1] < 2:
        raise ValueError("include_background=False needs at least 2 classes")
    mask = valid_mask(target, ignore_index)
    probs = masked_probabilities(probabilities(logits), mask)
    onehot = one_hot(target, logits.shape[1], mask, probs.dtype)
    tp, fp, fn = soft_counts(probs, onehot, batch)
    dice = (2 * tp + smooth) / (2 * tp + fp + fn + smooth).clamp_min(1e-8)
    return select_classes(dice, include_background)


def dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int | None = None,
    include_background: bool = False,
    batch: bool = False,
    smooth: float = 1e-5,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Soft Dice loss, 1 minus the class-averaged soft Dice coefficient.

    .. math:: L = 1 - \frac{1}{|C|} \sum_c \frac{2 \sum_n p_{nc} t_{nc} + s}{\sum_n p_{nc} + \sum_n t_{nc} + s}

    Milletari et al., "V-Net", 3DV 2016 (their squared denominator is replaced by the linear one
    that nnU-Net and most later work use). Per case, unless ``batch=True`` sums the batch before the
    ratio (nnU-Net's batch Dice; ``reduction="none"`` then returns one value of shape ``[1]``).

    Example:
        >>> logits = torch.tensor([[[[9.0, -9.0]], [[-9.0, 9.0]]]])  # [1, 2, 1, 2], confident
        >>> target = torch.tensor([[[0, 1]]])
        >>> float(dice_loss(logits, target)) < 1e-6
        True
    """
    check_reduction(reduction)
    dice = soft_dice_per_class(logits, target, ignore_index, include_background, batch, smooth)
    return reduce(1 - dice.mean(1), reduction)


@register_loss("dice", category="region", function=dice_loss,
               citation="Milletari, Navab, Ahmadi. V-Net. 3DV 2016 (arXiv:1606.04797)")
class DiceLoss(RegionLoss):
    """Soft Dice loss: 1 - mean over classes of the soft Dice coefficient."""

    def __init__(self, *, include_background: bool = False, batch: bool = False, smooth: float = 1e-5,
                 ignore_index: int | None = None, reduction: str = "mean"):
        super().__init__(include_background=include_background, batch=batch, smooth=smooth,
                         ignore_index=ignore_index, reduction=reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return dice_loss(logits, target, **self.region_kwargs())
