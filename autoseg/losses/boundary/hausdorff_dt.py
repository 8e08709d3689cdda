"""Hausdorff distance loss, distance-transform variant (Karimi & Salcudean), multi-class."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from autoseg.losses._functional import masked_voxel_mean, one_hot, probabilities, select_classes, valid_mask
from autoseg.losses._validation import check_bool, check_logits_target, check_positive, check_reduction
from autoseg.losses.base import SegmentationLoss
from autoseg.losses.maps import check_spacing_argument, distance_to_boundary_torch, resolve_map
from autoseg.losses.registry import register_loss


def hausdorff_dt_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    distance: torch.Tensor | None = None,
    alpha: float = 2.0,
    ignore_index: int | None = None,
    include_background: bool = False,
    spacing: Sequence[float] | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""One-sided-free Hausdorff loss of Karimi & Salcudean (IEEE TMI 2019, arXiv 1904.10030), DT form.

    .. math:: L = \frac{1}{|C'|\,N} \sum_{c \in C'} \sum_n (p_c(n) - t_c(n))^2 \,
              \big(d_{t,c}(n)^\alpha + d_{p,c}(n)^\alpha\big)

    :math:`d_{t,c}` is the unsigned distance to the boundary of class ``c`` in the ground truth (the
    ``distance`` map, handed in or computed from ``target``), :math:`d_{p,c}` the same for the
    thresholded prediction (the arg-max one-hot; for two classes this is the paper's p > 0.5),
    computed here on every call, on the GPU when the logits are there, and not differentiated (as
    the paper); ignored voxels count as no class there, as in the ground truth. Distances are in
    the units of ``spacing`` (voxels by default). Classes absent from
    the ground truth (or from the prediction) have a zero map, as the reference code. Ignored voxels
    add nothing. A perfect prediction gives 0.

    Example:
        >>> target = torch.tensor([[[0, 0, 1, 1]]])
        >>> perfect = 20 * torch.nn.functional.one_hot(target, 2).movedim(-1, 1).float()
        >>> float(hausdorff_dt_loss(perfect, target)) < 1e-12
        True
    """
    check_reduction(reduction)
    alpha = check_positive("alpha", alpha)
    target = check_logits_target(logits, target, ignore_index)
    mask = valid_mask(target, ignore_index)
    num_classes = logits.shape[1]
    d_t = resolve_map("distance", {} if distance is None else {"distance": distance}, target, num_classes,
                      spacing, ignore_index)
    probs = probabilities(logits)
    t = one_hot(target, num_classes, mask, probs.dtype)
    with torch.no_grad():
        pred = torch.nn.functional.one_hot(logits.argmax(1), num_classes).movedim(-1, 1)
        if mask is not None:
            # Ignored voxels belong to no class in the prediction either (as in the ground-truth
            # maps), so their logits cannot move the distances elsewhere.
            pred = pred * mask.unsqueeze(1)
        # Only the classes the loss keeps: the others are multiplied by nothing.
        first = 0 if include_background else 1
        kept = pred[:, first:]
        d_p = torch.zeros(pred.shape, dtype=torch.float32, device=pred.device)
        d_p[:, first:] = distance_to_boundary_torch(kept.reshape(-1, *kept.shape[2:]), spacing).reshape(kept.shape)
    per_class = (probs - t) ** 2 * (d_t ** alpha + d_p ** alpha)
    per_voxel = select_classes(per_class.movedim(1, -1), include_background).mean(-1)
    return masked_voxel_mean(per_voxel, mask, reduction)


@register_loss("hausdorff_dt", category="boundary", function=hausdorff_dt_loss,
               citation="Karimi & Salcudean. Reducing the Hausdorff distance in medical image segmentation with "
                        "convolutional neural networks. IEEE TMI 2019 (arXiv:1904.10030)")
class HausdorffDTLoss(SegmentationLoss):
    """Hausdorff distance loss (distance-transform variant): mean (p - t)^2 (d_t^alpha + d_p^alpha).

    Under deep supervision this term is evaluated at full resolution only (``full_resolution_only``):
    the prediction's distance maps are computed once per step, on the network's full-resolution
    output, and the term carries the whole deep-supervision weight there.
    """

    extra_inputs: ClassVar[tuple[str, ...]] = ("distance",)
    full_resolution_only: ClassVar[bool] = True

    def __init__(self, alpha: float = 2.0, spacing: Sequence[float] | None = None, *,
                 include_background: bool = False, ignore_index: int | None = None, reduction: str = "mean"):
        super().__init__(ignore_index=ignore_index, reduction=reduction)
        self.alpha = check_positive("alpha", alpha)
        self.include_background = check_bool("include_background", include_background)
        self.spacing = check_spacing_argument(spacing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, **extras: torch.Tensor) -> torch.Tensor:
        self.check_inputs(logits, target, extras)
        return hausdorff_dt_loss(logits, target, extras.get("distance"), self.alpha, self.ignore_index,
                                 self.include_background, self.spacing, self.reduction)
