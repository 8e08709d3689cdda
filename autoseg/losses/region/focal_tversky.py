"""Focal Tversky loss (Abraham & Khan, 2019): the Tversky loss raised to 1/gamma per class."""

from __future__ import annotations

import torch

from autoseg.losses._functional import reduce, safe_pow
from autoseg.losses._validation import check_positive, check_reduction
from autoseg.losses.base import RegionLoss
from autoseg.losses.region.tversky import check_tversky, tversky_index
from autoseg.losses.registry import register_loss


def focal_tversky_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.7,
    beta: float = 0.3,
    gamma: float = 4 / 3,
    ignore_index: int | None = None,
    include_background: bool = False,
    batch: bool = False,
    smooth: float = 1e-5,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Focal Tversky loss, the class mean of :math:`(1 - TI_c)^{1/\gamma}`.

    .. math:: L = \frac{1}{|C|} \sum_c \Big(1 - \frac{TP_c + s}{TP_c + \alpha FN_c + \beta FP_c + s}\Big)^{1/\gamma}

    Abraham & Khan, "A novel focal Tversky loss function with improved attention U-Net for lesion
    segmentation", ISBI 2019 (arXiv:1810.07842). The paper SUMS over classes; autoseg averages so
    that the scale does not grow with the number of classes (a constant factor). ``alpha`` weighs
    false negatives, ``beta`` false positives (see :func:`tversky_loss`); ``gamma = 1`` is the
    Tversky loss. With ``gamma > 1`` the slope of ``x^{1/gamma}`` at 0 is infinite; below
    ``1e-6`` the power is continued linearly so gradients stay finite; a class whose Tversky loss is
    below 1e-6 has its term changed by up to 3.3e-6 at the default γ = 4/3 (exponent 0.75) and up to
    3.8e-3 at γ = 3 (see :func:`~autoseg.losses._functional.safe_pow`).

    Example:
        >>> logits = torch.tensor([[[[0.0, 0.0]], [[0.0, 0.0]]]])
        >>> target = torch.tensor([[[0, 1]]])
        >>> round(float(focal_tversky_loss(logits, target, smooth=0, gamma=2.0)), 4)  # sqrt(0.5)
        0.7071
    """
    check_reduction(reduction)
    alpha, beta = check_tversky(alpha, beta)
    gamma = check_positive("gamma", gamma)
    smooth = check_positive("smooth", smooth, allow_zero=True)
    ti = tversky_index(logits, target, alpha, beta, ignore_index, include_background, batch, smooth)
    return reduce(safe_pow(1 - ti, 1 / gamma).mean(1), reduction)


@register_loss("focal_tversky", category="region", function=focal_tversky_loss,
               citation="Abraham, Khan. A novel focal Tversky loss function with improved attention U-Net for "
                        "lesion segmentation. ISBI 2019 (arXiv:1810.07842)")
class FocalTverskyLoss(RegionLoss):
    """Focal Tversky loss: mean over classes of (1 - Tversky index)^(1/gamma)."""

    def __init__(self, alpha: float = 0.7, beta: float = 0.3, gamma: float = 4 / 3, *,
                 include_background: bool = False, batch: bool = False, smooth: float = 1e-5,
                 ignore_index: int | None = None, reduction: str = "mean"):
        super().__init__(include_background=include_background, batch=batch, smooth=smooth,
                         ignore_index=ignore_index, reduction=reduction)
        self.alpha, self.beta = check_tversky(alpha, beta)
        self.gamma = check_positive("gamma", gamma)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_tversky_loss(logits, target, self.alpha, self.beta, self.gamma, **self.region_kwargs())
