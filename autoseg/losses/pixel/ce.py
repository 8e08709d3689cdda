"""Cross-entropy, optionally class-weighted."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from autoseg.losses._functional import log_probabilities, masked_voxel_mean, valid_mask
from autoseg.losses._validation import check_logits_target, check_reduction
from autoseg.losses.base import SegmentationLoss
from autoseg.losses.registry import register_loss


def _class_weights(weight: Sequence[float] | torch.Tensor | None, num_classes: int,
                   like: torch.Tensor) -> torch.Tensor | None:
    if weight is None:
        return None
    w = torch.as_tensor(weight, dtype=like.dtype, device=like.device).flatten()
    if w.numel() != num_classes:
        raise ValueError(f"weight must have one entry per class ({num_classes}), got {w.numel()}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"weight must be finite and non-negative, got {w.tolist()}")
    return w


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: Sequence[float] | torch.Tensor | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Cross-entropy of softmax probabilities, optionally class-weighted.

    .. math:: L = -\frac{\sum_n w_{y_n} \log p_n^{y_n}}{\sum_n w_{y_n}}

    over the voxels that are not ``ignore_index`` (with ``weight=None`` all :math:`w = 1`, the
    plain mean). The weighted mean is normalised by the summed weights, as
    :func:`torch.nn.functional.cross_entropy`. With every voxel ignored the loss is 0.

    Args:
        logits: raw scores ``[B, C, *spatial]`` (2D or 3D).
        target: class indices ``[B, 1, *spatial]`` or ``[B, *spatial]``.
        weight: optional per-class weights (length C), e.g. inverse class frequency.
        ignore_index: label whose voxels add neither value nor gradient.
        reduction: ``"mean"`` over counted voxels, ``"sum"``, or ``"none"`` (one value per case).

    Example:
        >>> logits = torch.zeros(1, 3, 4, 4)
        >>> target = torch.zeros(1, 4, 4, dtype=torch.long)
        >>> round(float(cross_entropy(logits, target)), 4)  # log(3)
        1.0986
    """
    check_reduction(reduction)
    target = check_logits_target(logits, target, ignore_index)
    mask = valid_mask(target, ignore_index)
    logp = log_probabilities(logits)
    safe = target if mask is None else torch.where(mask, target, torch.zeros_like(target))
    nll = -logp.gather(1, safe.unsqueeze(1)).squeeze(1)
    w = _class_weights(weight, logits.shape[1], logp)
    return masked_voxel_mean(nll, mask, reduction, None if w is None else w[safe])


@register_loss("ce", category="pixel", citation="standard cross-entropy", function=cross_entropy)
class CrossEntropyLoss(SegmentationLoss):
    """Cross-entropy (optionally class-weighted) over the non-ignored voxels."""

    def __init__(self, weight: Sequence[float] | None = None, *, ignore_index: int | None = None,
                 reduction: str = "mean"):
        super().__init__(ignore_index=ignore_index, reduction=reduction)
        self.weight = None if weight is None else [float(x) for x in weight]
        if self.weight is not None and any(not (x >= 0) for x in self.weight):
            raise ValueError(f"weight must be non-negative, got {self.weight}")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, target, self.weight, ignore_index=self.ignore_index, reduction=self.reduction)
