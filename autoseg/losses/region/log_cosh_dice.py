"""Log-cosh Dice loss (Jadon, 2020): the Dice loss passed through log(cosh(x))."""

from __future__ import annotations

import math

import torch

from autoseg.losses._functional import reduce
from autoseg.losses._validation import check_positive, check_reduction
from autoseg.losses.base import RegionLoss
from autoseg.losses.region.dice import soft_dice_per_class
from autoseg.losses.registry import register_loss


def _log_cosh(x: torch.Tensor) -> torch.Tensor:
    # log(cosh x) = |x| + log(1 + e^{-2|x|}) - log 2, which never overflows.
    a = x.abs()
    return a + torch.nn.functional.softplus(-2 * a) - math.log(2.0)


def log_cosh_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int | None = None,
    include_background: bool = False,
    batch: bool = False,
    smooth: float = 1e-5,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Log-cosh Dice loss, :math:`\log\cosh(L_{Dice})` with :math:`\cosh x = (e^x + e^{-x})/2`.

    Jadon, "A survey of loss functions for semantic segmentation", CIBCB 2020 (arXiv:2006.14822).
    The survey prints cosh with a minus sign (that is sinh, whose log is -inf at 0); this is the
    original. ``L_{Dice}`` is :func:`dice_loss` per case (or of the batch with ``batch=True``), the
    log-cosh is applied to it before ``reduction``. Since ``log cosh x < x`` for ``x > 0`` the
    value is below the Dice loss; it is flatter near 0 (slope ``tanh x``).

    Example:
        >>> logits = torch.tensor([[[[0.0, 0.0]], [[0.0, 0.0]]]])
        >>> target = torch.tensor([[[0, 1]]])
        >>> round(float(log_cosh_dice_loss(logits, target, smooth=0)), 4)  # Dice 0.5: log(cosh(0.5))
        0.1201
    """
    check_reduction(reduction)
    smooth = check_positive("smooth", smooth, allow_zero=True)
    dice = soft_dice_per_class(logits, target, ignore_index, include_background, batch, smooth)
    return reduce(_log_cosh(1 - dice.mean(1)), reduction)


@register_loss("log_cosh_dice", category="region", function=log_cosh_dice_loss,
               citation="Jadon. A survey of loss functions for semantic segmentation. CIBCB 2020 "
                        "(arXiv:2006.14822)")
class LogCoshDiceLoss(RegionLoss):
    """Log-cosh Dice loss: log(cosh(soft Dice loss))."""

    def __init__(self, *, include_background: bool = False, batch: bool = False, smooth: float = 1e-5,
                 ignore_index: int | None = None, reduction: str = "mean"):
        super().__init__(include_background=include_background, batch=batch, smooth=smooth,
                         ignore_index=ignore_index, reduction=reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return log_cosh_dice_loss(logits, target, **self.region_kwargs())
