"""Region-wise loss (Valverde & Tohka) with rectified region-wise (RRW) maps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from autoseg.losses._functional import masked_voxel_mean, one_hot, probabilities, select_classes, valid_mask
from autoseg.losses._validation import check_bool, check_logits_target, check_reduction
from autoseg.losses.base import SegmentationLoss
from autoseg.losses.maps import check_spacing_argument, resolve_map
from autoseg.losses.registry import register_loss


def rrw_map(signed_distance: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    r"""Rectified region-wise map :math:`z_c(n)`: +1 outside class ``c``, :math:`-d_c(n)/\max d_c` inside.

    :math:`d_c(n)` is the distance of an inside voxel to the nearest voxel outside the class
    (minus the ``signed_distance`` map), normalised by its maximum over the case. A class filling
    the whole case (no outside voxel, distance undefined) gets -1 inside.
    """
    inside = onehot > 0
    d = torch.where(inside, -signed_distance, torch.zeros_like(signed_distance)).clamp_min(0)
    dmax = d.flatten(2).amax(2).reshape(*d.shape[:2], *([1] * (d.ndim - 2)))
    z_in = torch.where(dmax > 0, -d / dmax.clamp_min(1e-12), -torch.ones_like(d))
    return torch.where(inside, z_in, torch.ones_like(d))


def region_wise_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    signed_distance: torch.Tensor | None = None,
    ignore_index: int | None = None,
    include_background: bool = True,
    spacing: Sequence[float] | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Region-wise loss :math:`\frac{1}{|C'| N}\sum_{c, n} p_c(n)\, z_c(n)` with RRW maps :math:`z` (:func:`rrw_map`).

    Valverde & Tohka, "Region-wise loss for biomedical image segmentation", Pattern Recognition 2023
    (arXiv 2108.01405); the map follows their released code (inside: minus the distance transform
    normalised by its maximum, outside: 1), per class and case. The mean runs over all classes by
    default (``include_background=True``, as the reference) and over the counted voxels. A perfect
    prediction is the minimum (each voxel scores its own class's value in [-1, 0)); the value is
    negative there. The map is derived from the ``signed_distance`` map, handed in or computed.

    Example:
        >>> target = torch.tensor([[[0, 0, 0, 1, 1, 1]]])  # inside distances 3, 2, 1 | 1, 2, 3
        >>> perfect = 30 * torch.nn.functional.one_hot(target, 2).movedim(-1, 1).float()
        >>> round(float(region_wise_loss(perfect, target)), 4)  # mean of -(1, 2/3, 1/3) per class, / 2
        -0.3333
    """
    check_reduction(reduction)
    target = check_logits_target(logits, target, ignore_index)
    mask = valid_mask(target, ignore_index)
    phi = resolve_map("signed_distance", {} if signed_distance is None else {"signed_distance": signed_distance},
                      target, logits.shape[1], spacing, ignore_index)
    probs = probabilities(logits)
    z = rrw_map(phi, one_hot(target, logits.shape[1], mask, probs.dtype))
    per_voxel = select_classes((probs * z).movedim(1, -1), include_background).mean(-1)
    return masked_voxel_mean(per_voxel, mask, reduction)


@register_loss("region_wise", category="boundary", function=region_wise_loss,
               citation="Valverde & Tohka. Region-wise loss for biomedical image segmentation. Pattern Recognition "
                        "2023 (arXiv:2108.01405)")
class RegionWiseLoss(SegmentationLoss):
    """Region-wise loss with rectified region-wise maps: mean of p * z, z = 1 outside, -normalised distance inside."""

    extra_inputs: ClassVar[tuple[str, ...]] = ("signed_distance",)

    def __init__(self, spacing: Sequence[float] | None = None, *, include_background: bool = True,
                 ignore_index: int | None = None, reduction: str = "mean"):
        super().__init__(ignore_index=ignore_index, reduction=reduction)
        self.include_background = check_bool("include_background", include_background)
        self.spacing = check_spacing_argument(spacing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, **extras: torch.Tensor) -> torch.Tensor:
        self.check_inputs(logits, target, extras)
        return region_wise_loss(logits, target, extras.get("signed_distance"), self.ignore_index,
                                self.include_background, self.spacing, self.reduction)
