"""Hausdorff distance loss, erosion variant (Karimi & Salcudean, IEEE TMI 2019): pure tensor morphology."""

from __future__ import annotations

import torch

from autoseg.losses._functional import masked_probabilities, one_hot, probabilities, reduce, valid_mask
from autoseg.losses._validation import check_logits_target, check_positive, check_reduction
from autoseg.losses.base import RegionLoss
from autoseg.losses.boundary._morphology import cross_sum
from autoseg.losses.region.dice import dice_loss
from autoseg.losses.registry import register_loss


def _check_erosions(erosions: int) -> int:
    if isinstance(erosions, bool) or not isinstance(erosions, int) or erosions < 1:
        raise ValueError(f"erosions must be a positive integer, got {erosions!r}")
    return erosions


def erosion_residuals(error: torch.Tensor, erosions: int, alpha: float,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""The weighted sum of successive soft erosions of an error map, :math:`\sum_k k^\alpha (f \ominus_k B)`.

    Each erosion correlates the map with the cross ``B`` normalised to sum 1 (zero padding),
    soft-thresholds at 0.5 (``max(x - 0.5, 0)``) and rescales the result to [0, 1] per image and
    channel (min-max over the counted voxels; a constant map is left as it is), as in the reference
    implementation (PatRyg99/HausdorffLoss, kept by kornia's ``HausdorffERLoss``). Voxels outside
    ``mask`` (``[B, *spatial]``, ignored labels) are held at 0, like the outside of the image.

    Args:
        error: ``[B, C, *spatial]`` non-negative map, e.g. ``(p - t) ** 2``.
        erosions: number K of erosions.
        alpha: exponent of the weight :math:`k^\alpha` of erosion k = 1..K.
        mask: counted voxels, or ``None`` for all.

    Returns:
        ``[B, C, *spatial]``, 0 outside ``mask``.
    """
    keep = None if mask is None else mask.unsqueeze(1).to(error.dtype)
    spatial = tuple(range(2, error.ndim))
    f = error if keep is None else error * keep
    total = torch.zeros_like(f)
    width = 2 * (error.ndim - 2) + 1  # voxels in the cross
    for k in range(1, erosions + 1):
        g = cross_sum(f) / width
        # max(g - 0.5, 0) with gradient 1 at exactly 0.5, as kornia (clamp's derivative there varies by version)
        g = (g - 0.5).masked_fill(g < 0.5, 0)
        if keep is not None:
            g = g * keep
            counted = keep.bool()
            lo = torch.where(counted, g, torch.full_like(g, float("inf"))).amin(spatial, keepdim=True)
            hi = torch.where(counted, g, torch.full_like(g, -float("inf"))).amax(spatial, keepdim=True)
        else:
            lo = g.amin(spatial, keepdim=True)
            hi = g.amax(spatial, keepdim=True)
        span = hi - lo
        rescale = torch.isfinite(span) & (span > 0)  # an all-ignored image has no finite span
        lo = torch.where(rescale, lo, torch.zeros_like(lo))
        g = torch.where(rescale, (g - lo) / torch.where(rescale, span, torch.ones_like(span)), g)
        if keep is not None:
            g = g * keep
        total = total + g * float(k) ** alpha
        f = g
    return total


def hausdorff_er_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    erosions: int = 10,
    alpha: float = 2.0,
    weight_dice: float = 1.0,
    ignore_index: int | None = None,
    include_background: bool = False,
    batch: bool = False,
    smooth: float = 1e-5,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Erosion-based Hausdorff distance loss of Karimi & Salcudean, plus their Dice term.

    .. math::
        L_{ER} = \frac{1}{|C'|\,|\Omega|} \sum_{c \in C'} \sum_{k=1}^{K} k^{\alpha}
                 \sum_{n \in \Omega} \big((p_c - t_c)^2 \ominus_k B\big)_n,
        \qquad L = L_{ER} + w_{dice}\, L_{Dice}

    :math:`\ominus_k B` is k successive soft erosions with the cross-shaped structuring element of
    the paper (the voxel and its 4 face neighbours in 2D, 6 in 3D, weights summing to 1), each a
    correlation followed by soft thresholding at 0.5 and a rescaling to [0, 1] per image and class
    (see :func:`erosion_residuals`). Errors that survive many erosions are large, thick error
    regions, the ones that make the Hausdorff distance, and get the weight :math:`k^\alpha`.
    :math:`\Omega` is the set of counted (not ignored) voxels; ignored voxels are held at 0 during
    the erosions, like the outside of the image. C' are the classes kept (background only with
    ``include_background``; with two classes the two channels give the same map).

    Karimi & Salcudean, "Reducing the Hausdorff distance in medical image segmentation with
    convolutional neural networks", IEEE TMI 39(2), 2020 (arXiv:1904.10030), the erosion-based loss. The paper
    trains the Hausdorff term together with a Dice loss, :math:`L_{HD} + \lambda L_{DSC}`; the
    erosion term alone gives no gradient wherever the errors are thin or below one half (it is 0
    there), so a network does not learn from it alone. ``weight_dice`` is that λ (the soft Dice of
    :func:`autoseg.losses.region.dice.dice_loss`, with ``include_background``, ``batch`` and
    ``smooth``); ``weight_dice=0`` gives the pure erosion term.

    Args:
        logits: raw scores ``[B, C, *spatial]`` (2D or 3D).
        target: class indices ``[B, 1, *spatial]`` or ``[B, *spatial]``.
        erosions: K, the number of erosions (paper: 10).
        alpha: exponent of the erosion weight (paper: 2).
        weight_dice: weight λ of the Dice term.
        ignore_index: label whose voxels add neither value nor gradient.
        include_background: keep class 0.
        batch: batch Dice for the Dice term (the erosion term is a per-voxel mean either way).
        smooth: Dice smoothing.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per case; ``[1]`` with ``batch``).

    Example:
        >>> target = torch.zeros(1, 12, 12, dtype=torch.long)
        >>> target[0, 3:9, 3:9] = 1
        >>> perfect = 20.0 * torch.nn.functional.one_hot(target, 2).movedim(-1, 1).float()
        >>> shifted = perfect.roll(3, dims=-1)
        >>> float(hausdorff_er_loss(perfect, target)) < 1e-6 < float(hausdorff_er_loss(shifted, target))
        True
    """
    check_reduction(reduction)
    erosions = _check_erosions(erosions)
    target = check_logits_target(logits, target, ignore_index)
    if not include_background and logits.shape[1] < 2:
        raise ValueError("include_background=False needs at least 2 classes")
    mask = valid_mask(target, ignore_index)
    probs = masked_probabilities(probabilities(logits), mask)
    onehot = one_hot(target, logits.shape[1], mask, probs.dtype)
    error = (probs - onehot) ** 2
    error = error if include_background else error[:, 1:]
    residual = erosion_residuals(error, erosions, alpha, mask)
    spatial = tuple(range(2, logits.ndim))
    per_case_class = residual.sum(spatial)  # [B, C']
    n_counted = (torch.full_like(per_case_class[:, 0], float(target[0].numel())) if mask is None
                 else mask.flatten(1).sum(1).to(per_case_class.dtype))
    if reduction == "mean":
        # mean over every counted voxel of the batch and over classes
        er = per_case_class.mean(1).sum() / n_counted.sum().clamp_min(1)
    else:
        er = reduce(per_case_class.mean(1) / n_counted.clamp_min(1), reduction)
        if reduction == "none" and batch:
            er = er.mean().reshape(1)
    if weight_dice == 0:
        return er
    return er + weight_dice * dice_loss(logits, target, ignore_index, include_background, batch, smooth, reduction)


@register_loss("hausdorff_er", category="boundary", function=hausdorff_er_loss,
               citation="Karimi, Salcudean. Reducing the Hausdorff distance in medical image segmentation with "
                        "convolutional neural networks. IEEE TMI 2020 (arXiv:1904.10030)")
class HausdorffERLoss(RegionLoss):
    """Hausdorff distance loss by soft erosions of the squared error (+ the paper's Dice term)."""

    def __init__(self, erosions: int = 10, alpha: float = 2.0, weight_dice: float = 1.0, *,
                 include_background: bool = False, batch: bool = False, smooth: float = 1e-5,
                 ignore_index: int | None = None, reduction: str = "mean"):
        super().__init__(include_background=include_background, batch=batch, smooth=smooth,
                         ignore_index=ignore_index, reduction=reduction)
        self.erosions = _check_erosions(erosions)
        self.alpha = check_positive("alpha", alpha, allow_zero=True)
        self.weight_dice = check_positive("weight_dice", weight_dice, allow_zero=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return hausdorff_er_loss(logits, target, self.erosions, self.alpha, self.weight_dice,
                                 **self.region_kwargs())
