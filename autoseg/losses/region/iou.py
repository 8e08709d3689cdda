"""Soft IoU (Jaccard) loss (Rahman & Wang, 2016)."""

from __future__ import annotations

import torch

from autoseg.losses._functional import reduce, select_classes, soft_region_counts
from autoseg.losses._validation import check_positive, check_reduction
from autoseg.losses.base import RegionLoss
from autoseg.losses.registry import register_loss


def iou_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int | None = None,
    include_background: bool = False,
    batch: bool = False,
    smooth: float = 1e-5,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Soft IoU loss, 1 minus the class-averaged soft Jaccard index.

    .. math:: L = 1 - \frac{1}{|C|} \sum_c \frac{\sum_n p_{nc} t_{nc} + s}
              {\sum_n p_{nc} + \sum_n t_{nc} - \sum_n p_{nc} t_{nc} + s}

    Rahman & Wang, "Optimizing intersection-over-union in deep neural networks for image
    segmentation", ISVC 2016. A class absent from reference and prediction scores ``s / s = 1``.
    ``include_background``, ``batch``, ``smooth`` and ``reduction`` as :func:`dice_loss`.

    Example:
        >>> logits = torch.tensor([[[[0.0, 0.0]], [[0.0, 0.0]]]])  # p = 0.5 everywhere
        >>> target = torch.tensor([[[0, 1]]])
        >>> round(float(iou_loss(logits, target, smooth=0)), 4)  # 1 - 0.5 / (1 + 1 - 0.5)
        0.6667
    """
    check_reduction(reduction)
    smooth = check_positive("smooth", smooth, allow_zero=True)
    tp, fp, fn = soft_region_counts(logits, target, ignore_index, batch)
    iou = (tp + smooth) / (tp + fp + fn + smooth).clamp_min(1e-8)
    return reduce(1 - select_classes(iou, include_background).mean(1), reduction)


@register_loss("iou", category="region", function=iou_loss,
               citation="Rahman, Wang. Optimizing intersection-over-union in deep neural networks for image "
                        "segmentation. ISVC 2016")
class IoULoss(RegionLoss):
    """Soft IoU (Jaccard) loss: 1 - mean over classes of the soft Jaccard index."""

    def __init__(self, *, include_background: bool = False, batch: bool = False, smooth: float = 1e-5,
                 ignore_index: int | None = None, reduction: str = "mean"):
        super().__init__(include_background=include_background, batch=batch, smooth=smooth,
                         ignore_index=ignore_index, reduction=reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return iou_loss(logits, target, **self.region_kwargs())
