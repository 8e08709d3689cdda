"""Generalised Wasserstein Dice loss (Fidon et al., 2017): Dice with a class-distance matrix."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from autoseg.losses._functional import masked_probabilities, one_hot, probabilities, reduce, valid_mask
from autoseg.losses._validation import check_logits_target, check_positive, check_reduction
from autoseg.losses.base import RegionLoss
from autoseg.losses.registry import register_loss

Matrix = Sequence[Sequence[float]] | torch.Tensor | None


def check_distance_matrix(matrix: Matrix) -> list[list[float]] | None:
    """A square C x C matrix with entries in [0, 1] and a zero diagonal (``None``: ``1 - I``)."""
    if matrix is None:
        return None
    m = torch.as_tensor(matrix, dtype=torch.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise ValueError(f"distance_matrix must be a square C x C matrix with C >= 2, got shape {tuple(m.shape)}")
    if not bool(torch.isfinite(m).all()) or bool((m < 0).any()) or bool((m > 1).any()):
        raise ValueError(f"distance_matrix entries must lie in [0, 1] (Fidon's normalisation), got {m.tolist()}")
    if bool((m.diagonal() != 0).any()):
        raise ValueError(f"distance_matrix must have a zero diagonal, got diagonal {m.diagonal().tolist()}")
    return m.tolist()


def gwdl_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    distance_matrix: Matrix = None,
    ignore_index: int | None = None,
    batch: bool = False,
    smooth: float = 1e-5,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Generalised Wasserstein Dice loss with class-distance matrix ``M`` (class 0 the background).

    .. math::
        W_n = \sum_c M_{g_n c}\, p_n^c, \qquad \alpha_l = M_{l, 0}, \qquad
        TP = \sum_l \alpha_l \sum_n t_n^l (\alpha_l - W_n), \qquad
        L = 1 - \frac{2\,TP + s}{2\,TP + \sum_n W_n + s}

    Fidon et al., "Generalised Wasserstein Dice score for imbalanced multi-class segmentation
    using holistic convolutional networks", BrainLes 2017 (arXiv:1707.00478); the survey's Eq. 9
    is garbled, this is the paper's. ``W_n`` is the Wasserstein distance between the prediction
    and the reference label ``g_n`` under ``M``; the background contributes no true positives
    (``alpha_0 = 0``), so there is no ``include_background``. ``M = 1 - I`` (the default) makes
    every confusion equally bad. ``M`` should have entries in [0, 1] with the background at
    distance 1 from every other class; a square matrix with zero diagonal is required.

    Example:
        >>> logits = torch.tensor([[[[0.0, 0.0]], [[0.0, 0.0]]]])  # p = 0.5 everywhere
        >>> target = torch.tensor([[[0, 1]]])
        >>> # W = 0.5 at both voxels; TP = 1 * (1 - 0.5) from the foreground voxel; 1 - 1 / (1 + 1)
        >>> round(float(gwdl_loss(logits, target, smooth=0)), 4)
        0.5
    """
    check_reduction(reduction)
    smooth = check_positive("smooth", smooth, allow_zero=True)
    target = check_logits_target(logits, target, ignore_index)
    num_classes = logits.shape[1]
    mask = valid_mask(target, ignore_index)
    probs = masked_probabilities(probabilities(logits), mask)
    if distance_matrix is None:
        m = 1 - torch.eye(num_classes, dtype=probs.dtype, device=probs.device)
    else:
        m = torch.as_tensor(distance_matrix, dtype=probs.dtype, device=probs.device)
        if m.shape != (num_classes, num_classes):
            raise ValueError(f"distance_matrix is {tuple(m.shape)} but logits have {num_classes} classes")
    t = one_hot(target, num_classes, mask, probs.dtype)  # ignored voxels: all-zero rows
    safe = target if mask is None else torch.where(mask, target, torch.zeros_like(target))
    # W_n = sum_c M[g_n, c] p_n^c (zero at ignored voxels, where p is zero); row lookup, no matmul, so
    # autocast cannot move it to half precision.
    wass = (m[safe].movedim(-1, 1) * probs).sum(1)
    alpha = m[:, 0]
    shape = (1, num_classes) + (1,) * (probs.ndim - 2)
    a = alpha.view(shape)
    axes = tuple(range(1, wass.ndim))
    tp = (a * t * (a - wass.unsqueeze(1))).sum(1).sum(axes)
    err = wass.sum(axes)
    if batch:
        tp, err = tp.sum(0, keepdim=True), err.sum(0, keepdim=True)
    score = (2 * tp + smooth) / (2 * tp + err + smooth).clamp_min(1e-8)
    return reduce(1 - score, reduction)


@register_loss("gwdl", category="region", function=gwdl_loss,
               citation="Fidon et al. Generalised Wasserstein Dice score for imbalanced multi-class "
                        "segmentation using holistic convolutional networks. BrainLes 2017 (arXiv:1707.00478)")
class GWDLLoss(RegionLoss):
    """Generalised Wasserstein Dice loss: Dice whose errors are weighed by a class-distance matrix."""

    def __init__(self, distance_matrix: Matrix = None, *, batch: bool = False, smooth: float = 1e-5,
                 ignore_index: int | None = None, reduction: str = "mean"):
        # No include_background argument: alpha_0 = M[0, 0] = 0 leaves the background out of TP already,
        # while its voxels' Wasserstein errors always count.
        super().__init__(include_background=True, batch=batch, smooth=smooth, ignore_index=ignore_index,
                         reduction=reduction)
        self.distance_matrix = check_distance_matrix(distance_matrix)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return gwdl_loss(logits, target, self.distance_matrix, ignore_index=self.ignore_index, batch=self.batch,
                         smooth=self.smooth, reduction=self.reduction)
