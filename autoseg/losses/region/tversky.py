"""Tversky loss (Salehi et al., 2017): Dice with separate weights on false negatives and false positives."""

from __future__ import annotations

import torch

from autoseg.losses._functional import reduce, select_classes, soft_region_counts
from autoseg.losses._validation import check_positive, check_reduction
from autoseg.losses.base import RegionLoss
from autoseg.losses.registry import register_loss


def tversky_index(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    beta: float,
    ignore_index: int | None,
    include_background: bool,
    batch: bool,
    smooth: float,
) -> torch.Tensor:
    """Soft Tversky index ``(TP + s) / (TP + alpha FN + beta FP + s)`` per kept class, ``[B, C']``."""
    tp, fp, fn = soft_region_counts(logits, target, ignore_index, batch)
    ti = (tp + smooth) / (tp + alpha * fn + beta * fp + smooth).clamp_min(1e-8)
    return select_classes(ti, include_background)


def check_tversky(alpha: float, beta: float) -> tuple[float, float]:
    alpha = check_positive("alpha", alpha, allow_zero=True)
    beta = check_positive("beta", beta, allow_zero=True)
    if alpha + beta == 0:
        raise ValueError(f"alpha and beta cannot both be 0 (the index would ignore every error), got {alpha}, {beta}")
    return alpha, beta


def tversky_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.7,
    beta: float = 0.3,
    ignore_index: int | None = None,
    include_background: bool = False,
    batch: bool = False,
    smooth: float = 1e-5,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Tversky loss, 1 minus the class-averaged soft Tversky index.

    .. math:: L = 1 - \frac{1}{|C|} \sum_c \frac{TP_c + s}{TP_c + \alpha\, FN_c + \beta\, FP_c + s}

    Salehi, Erdogmus, Gholipour, "Tversky loss function for image segmentation using 3D fully
    convolutional deep networks", MLMI 2017 (arXiv:1706.05721). ``alpha`` weighs FALSE NEGATIVES and
    ``beta`` FALSE POSITIVES, as in the survey's notation; Salehi et al.'s paper, MONAI and kornia use
    the opposite letters (their α weighs false positives). The default 0.7 / 0.3 is Salehi's best
    setting (written α = 0.3, β = 0.7 in the paper), which punishes missed foreground more.
    ``alpha = beta = 0.5`` is :func:`dice_loss`, ``alpha = beta = 1`` is :func:`iou_loss`.

    Example:
        >>> logits = torch.tensor([[[[0.0, 0.0]], [[0.0, 0.0]]]])  # p = 0.5 everywhere
        >>> target = torch.tensor([[[0, 1]]])
        >>> round(float(tversky_loss(logits, target, smooth=0)), 4)  # 1 - 0.5 / (0.5 + 0.7*0.5 + 0.3*0.5)
        0.5
    """
    check_reduction(reduction)
    alpha, beta = check_tversky(alpha, beta)
    smooth = check_positive("smooth", smooth, allow_zero=True)
    ti = tversky_index(logits, target, alpha, beta, ignore_index, include_background, batch, smooth)
    return reduce(1 - ti.mean(1), reduction)


@register_loss("tversky", category="region", function=tversky_loss,
               citation="Salehi, Erdogmus, Gholipour. Tversky loss function for image segmentation using 3D "
                        "fully convolutional deep networks. MLMI 2017 (arXiv:1706.05721)")
class TverskyLoss(RegionLoss):
    """Tversky loss: 1 - mean over classes of TP / (TP + alpha FN + beta FP)."""

    def __init__(self, alpha: float = 0.7, beta: float = 0.3, *, include_background: bool = False,
                 batch: bool = False, smooth: float = 1e-5, ignore_index: int | None = None,
                 reduction: str = "mean"):
        super().__init__(include_background=include_background, batch=batch, smooth=smooth,
                         ignore_index=ignore_index, reduction=reduction)
        self.alpha, self.beta = check_tversky(alpha, beta)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return tversky_loss(logits, target, self.alpha, self.beta, **self.region_kwargs())
