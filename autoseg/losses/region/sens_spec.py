"""Sensitivity-specificity loss (Brosch et al., 2015): squared errors weighed on foreground and background."""

from __future__ import annotations

import torch

from autoseg.losses._functional import (
    masked_probabilities,
    one_hot,
    probabilities,
    reduce,
    select_classes,
    valid_mask,
)
from autoseg.losses._validation import check_logits_target, check_positive, check_probability, check_reduction
from autoseg.losses.base import RegionLoss
from autoseg.losses.registry import register_loss


def sens_spec_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    r: float = 0.05,
    ignore_index: int | None = None,
    include_background: bool = False,
    batch: bool = False,
    smooth: float = 1e-5,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Sensitivity-specificity loss, averaged over classes.

    .. math:: L = \frac{1}{|C|} \sum_c \Big[ r \frac{\sum_n (t_{nc} - p_{nc})^2 t_{nc}}{\sum_n t_{nc} + s}
              + (1 - r) \frac{\sum_n (t_{nc} - p_{nc})^2 (1 - t_{nc})}{\sum_n (1 - t_{nc}) + s} \Big]

    Brosch et al., "Deep convolutional encoder networks for multiple sclerosis lesion
    segmentation", MICCAI 2015. The first term is the error on the reference voxels (1 -
    sensitivity), the second on the others (1 - specificity); ``r = 0.05`` as Brosch. Both terms
    are errors: the survey's Eq. 18 subtracts one of them, which would reward false positives.
    ``s`` keeps a class absent from the reference at 0 instead of 0/0. Ignored voxels are in
    neither sum.

    Example:
        >>> logits = torch.tensor([[[[0.0, 0.0]], [[0.0, 0.0]]]])  # p = 0.5 everywhere
        >>> target = torch.tensor([[[0, 1]]])
        >>> round(float(sens_spec_loss(logits, target, smooth=0)), 4)  # every squared error is 0.25
        0.25
    """
    check_reduction(reduction)
    r = check_probability("r", r)
    smooth = check_positive("smooth", smooth, allow_zero=True)
    target = check_logits_target(logits, target, ignore_index)
    mask = valid_mask(target, ignore_index)
    probs = masked_probabilities(probabilities(logits), mask)
    t = one_hot(target, logits.shape[1], mask, probs.dtype)
    background = 1 - t if mask is None else (1 - t) * mask.unsqueeze(1).to(t.dtype)
    sq = (t - probs) ** 2  # zero at ignored voxels: both are zero there
    axes = tuple(range(2, probs.ndim))
    err_fg, n_fg = (sq * t).sum(axes), t.sum(axes)
    err_bg, n_bg = (sq * background).sum(axes), background.sum(axes)
    if batch:
        err_fg, n_fg, err_bg, n_bg = (x.sum(0, keepdim=True) for x in (err_fg, n_fg, err_bg, n_bg))
    per_class = (r * err_fg / (n_fg + smooth).clamp_min(1e-8)
                 + (1 - r) * err_bg / (n_bg + smooth).clamp_min(1e-8))
    return reduce(select_classes(per_class, include_background).mean(1), reduction)


@register_loss("sens_spec", category="region", function=sens_spec_loss,
               citation="Brosch et al. Deep convolutional encoder networks for multiple sclerosis lesion "
                        "segmentation. MICCAI 2015")
class SensSpecLoss(RegionLoss):
    """Sensitivity-specificity loss: r * error on reference voxels + (1 - r) * error elsewhere."""

    def __init__(self, r: float = 0.05, *, include_background: bool = False, batch: bool = False,
                 smooth: float = 1e-5, ignore_index: int | None = None, reduction: str = "mean"):
        super().__init__(include_background=include_background, batch=batch, smooth=smooth,
                         ignore_index=ignore_index, reduction=reduction)
        self.r = check_probability("r", r)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sens_spec_loss(logits, target, self.r, **self.region_kwargs())
