"""Distance-map penalised cross-entropy (Caliva et al.): CE weighted by 1 + a map that is large near boundaries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from autoseg.losses._functional import log_probabilities, masked_voxel_mean, valid_mask
from autoseg.losses._validation import check_logits_target, check_reduction
from autoseg.losses.base import SegmentationLoss
from autoseg.losses.maps import check_spacing_argument, resolve_map
from autoseg.losses.registry import register_loss


def boundary_proximity(distance: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    r"""Caliva's :math:`\Phi`: the inverted, normalised distance of every voxel to the edge of its own region.

    ``distance`` is the ``distance`` map ``[B, C, *spatial]``; for voxel ``n`` of class ``y_n`` its
    channel ``y_n`` holds :math:`D_n`, the distance to the nearest voxel of another label.
    :math:`\Phi_n = 1 - D_n / \max_m D_m` (max over the counted voxels of the case), so
    :math:`\Phi` is largest next to a boundary and 0 at the deepest voxel; a case without any
    boundary (one class fills it) gets :math:`\Phi = 0`, i.e. plain CE.
    """
    safe = target if mask is None else torch.where(mask, target, torch.zeros_like(target))
    d = distance.gather(1, safe.unsqueeze(1)).squeeze(1)
    if mask is not None:
        d = d * mask.to(d.dtype)
    dmax = d.flatten(1).amax(1).reshape(-1, *([1] * (d.ndim - 1)))
    return torch.where(dmax > 0, 1 - d / dmax.clamp_min(1e-12), torch.zeros_like(d))


def dmce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    distance: torch.Tensor | None = None,
    ignore_index: int | None = None,
    spacing: Sequence[float] | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Distance-map penalised cross-entropy, :math:`-\frac1N\sum_n (1 + \Phi_n) \log p_n^{y_n}`.

    Caliva, Iriondo, Martinez, Majumdar, Pedoia, "Distance map loss penalty term for semantic
    segmentation", MIDL 2019 (arXiv 1908.03679). :math:`\Phi` (:func:`boundary_proximity`) comes
    from the ground-truth ``distance`` map, handed in or computed from ``target``. The mean is over
    the counted voxels (not normalised by the weights), so with :math:`\Phi = 0` this is CE.

    Example:
        >>> target = torch.tensor([[[0, 0, 1, 1]]])  # distances to the other label: 2, 1, 1, 2
        >>> logits = torch.zeros(1, 2, 1, 4)  # p = 1/2 everywhere: CE = log 2 per voxel
        >>> round(float(dmce_loss(logits, target) / torch.log(torch.tensor(2.0))), 4)  # mean(1 + Phi) = 1.25
        1.25
    """
    check_reduction(reduction)
    target = check_logits_target(logits, target, ignore_index)
    mask = valid_mask(target, ignore_index)
    dist = resolve_map("distance", {} if distance is None else {"distance": distance}, target, logits.shape[1],
                       spacing, ignore_index)
    phi = boundary_proximity(dist, target, mask)
    safe = target if mask is None else torch.where(mask, target, torch.zeros_like(target))
    nll = -log_probabilities(logits).gather(1, safe.unsqueeze(1)).squeeze(1)
    return masked_voxel_mean((1 + phi) * nll, mask, reduction)


@register_loss("dmce", category="pixel", function=dmce_loss,
               citation="Caliva et al. Distance map loss penalty term for semantic segmentation. MIDL 2019 "
                        "(arXiv:1908.03679)")
class DistanceMapCELoss(SegmentationLoss):
    """Distance-map penalised cross-entropy: -(1 + Phi) log p, Phi the inverted normalised distance to the boundary."""

    extra_inputs: ClassVar[tuple[str, ...]] = ("distance",)

    def __init__(self, spacing: Sequence[float] | None = None, *, ignore_index: int | None = None,
                 reduction: str = "mean"):
        super().__init__(ignore_index=ignore_index, reduction=reduction)
        self.spacing = check_spacing_argument(spacing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, **extras: torch.Tensor) -> torch.Tensor:
        self.check_inputs(logits, target, extras)
        return dmce_loss(logits, target, extras.get("distance"), self.ignore_index, self.spacing, self.reduction)
