"""Boundary-aware loss (Hayder, He, Salzmann, CVPR 2017), adapted to semantic classes as an auxiliary distance-bin target."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from autoseg.losses._functional import gathered_log_probabilities, masked_voxel_mean, one_hot, probabilities, valid_mask
from autoseg.losses._validation import check_logits_target, check_positive, check_reduction
from autoseg.losses.base import SegmentationLoss
from autoseg.losses.boundary._morphology import bins_from_survival, survival
from autoseg.losses.registry import register_loss

HEAD = "distance_bins"
_EPS = 1e-6


def check_head(name: str, head: torch.Tensor, logits: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Validate a head output against the logits: ``[B, channels, *spatial]`` (any channels for ``None``), floating point."""
    if not isinstance(head, torch.Tensor) or not head.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got {type(head).__name__}")
    expected = (logits.shape[0], head.shape[1] if channels is None and head.ndim > 1 else channels, *logits.shape[2:])
    if tuple(head.shape) != expected:
        raise ValueError(f"{name} must have shape {expected} (batch, {channels} channels, the logits' spatial size), "
                         f"got {tuple(head.shape)}")
    return head.float() if head.dtype != torch.float64 else head


def boundary_aware_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    head_distance_bins: torch.Tensor | None = None,
    num_bins: int = 5,
    weight: float = 1.0,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Cross-entropy plus the boundary-aware distance-bin term of Hayder et al., for semantic labels.

    .. math::
        L = L_{CE} + \lambda \frac{1}{K} \sum_{k=0}^{K-1} \mathrm{BCE}(\hat b_k, b_k), \qquad
        b_k(n) = [\min(d(n), K) - 1 = k]

    with :math:`d(n)` the distance from voxel n to the nearest voxel of another label (chessboard
    metric: 1 at a boundary voxel) and the BCE averaged over the counted voxels.

    Hayder et al. represent an instance mask by its truncated, ceiled distance to the boundary,
    quantised into K bins and predicted as K binary maps with BCE. The adaptation to semantic
    classes (documented in ``docs/losses.md``): one class-agnostic map, the distance of each voxel to
    the boundary of its own class region, is the auxiliary target, and cross-entropy trains the
    classes. The distance is the chessboard distance of the 3^d cube, computed by repeated erosions
    on the GPU (Hayder use the Euclidean one); with unit bins the truncation R equals K.
    Defaults K = R = 5.

    Where the K maps come from:

    * ``head_distance_bins`` ``[B, K, *spatial]`` (raw scores of the auxiliary head the autoseg trainer
      attaches to the last decoder stage): BCE with logits, as in the paper.
    * nothing (standalone use, and nnU-Net's lower deep-supervision scales): the reduced form. The
      bins are read off the softmax by soft erosions, :math:`\hat b_k = e_k - e_{k+1}` with
      :math:`e_k = \sum_c \mathrm{erode}^k(p_c)`; for a one-hot prediction these are exactly the
      bins of the prediction's own label map.

    Ignored voxels add nothing and are neutral in the morphology (no boundary at them).

    Example:
        >>> target = torch.zeros(1, 8, 8, dtype=torch.long); target[:, 2:6, 2:6] = 1
        >>> perfect = 20 * torch.nn.functional.one_hot(target, 2).movedim(-1, 1).float()
        >>> float(boundary_aware_loss(perfect, target)) < 1e-4
        True
    """
    check_reduction(reduction)
    target = check_logits_target(logits, target, ignore_index)
    k = int(num_bins)
    if k < 2:
        raise ValueError(f"num_bins must be >= 2, got {num_bins}")
    with torch.autocast(logits.device.type, enabled=False):
        mask = valid_mask(target, ignore_index)
        logp, _ = gathered_log_probabilities(logits, target, mask)
        ce = masked_voxel_mean(-logp, mask, reduction)
        dtype = logp.dtype
        valid = torch.ones_like(logp) if mask is None else mask.to(dtype)
        onehot = one_hot(target, logits.shape[1], mask, dtype)
        with torch.no_grad():
            gt_bins = bins_from_survival(survival(onehot, mask, k - 1), valid)
        if head_distance_bins is not None:
            head = check_head("head_distance_bins", head_distance_bins, logits, k).to(dtype)
            bce = F.binary_cross_entropy_with_logits(head, gt_bins, reduction="none").mean(1)
        else:
            probs = probabilities(logits)
            if mask is not None:
                probs = probs * valid.unsqueeze(1)
            pred = bins_from_survival(survival(probs, mask, k - 1), valid).clamp(_EPS, 1 - _EPS)
            bce = -(gt_bins * pred.log() + (1 - gt_bins) * (1 - pred).log()).mean(1)
        return ce + float(weight) * masked_voxel_mean(bce, mask, reduction)


@register_loss("boundary_aware", category="boundary", function=boundary_aware_loss,
               citation="Hayder, He, Salzmann. Boundary-aware instance segmentation. CVPR 2017 (arXiv:1612.03129)")
class BoundaryAwareLoss(SegmentationLoss):
    """Boundary-aware loss: cross-entropy + BCE of K distance-to-boundary bins (auxiliary head, Hayder et al.)."""

    #: the output of the auxiliary head the trainer attaches (autoseg.trainers.heads), not a worker map
    extra_inputs: ClassVar[tuple[str, ...]] = ("head_" + HEAD,)

    def __init__(self, num_bins: int = 5, weight: float = 1.0, *, ignore_index: int | None = None,
                 reduction: str = "mean"):
        super().__init__(ignore_index=ignore_index, reduction=reduction)
        if int(num_bins) != num_bins or num_bins < 2:
            raise ValueError(f"num_bins must be an integer >= 2, got {num_bins}")
        self.num_bins = int(num_bins)
        self.weight = check_positive("weight", weight, allow_zero=True)
        #: the trainer attaches one K-channel head on the last decoder stage (autoseg.trainers.heads)
        self.auxiliary_heads = {HEAD: self.num_bins}

    def forward(self, logits: torch.Tensor, target: torch.Tensor, **extras: Any) -> torch.Tensor:
        unknown = set(extras) - {"head_" + HEAD}
        if unknown:
            raise TypeError(f"boundary_aware got unexpected extras {sorted(unknown)}; it accepts 'head_{HEAD}'")
        return boundary_aware_loss(logits, target, extras.get("head_" + HEAD), self.num_bins, self.weight,
                                   self.ignore_index, self.reduction)
