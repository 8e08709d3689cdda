"""Boundary loss (Kervadec et al.), paired with soft Dice and the paper's weight ramp driven by the epoch hook."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from autoseg.losses._functional import masked_voxel_mean, probabilities, select_classes, valid_mask
from autoseg.losses._validation import check_logits_target, check_positive, check_reduction
from autoseg.losses.base import RegionLoss
from autoseg.losses.maps import check_spacing_argument, resolve_map
from autoseg.losses.region.dice import dice_loss
from autoseg.losses.registry import register_loss


def boundary_term(
    logits: torch.Tensor,
    target: torch.Tensor,
    signed_distance: torch.Tensor | None = None,
    ignore_index: int | None = None,
    include_background: bool = False,
    spacing: Sequence[float] | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Kervadec's boundary term alone: the mean over classes and voxels of :math:`\phi_c(n)\,p_c(n)`.

    :math:`\phi_c` is the signed distance map of class ``c``'s ground truth (negative inside,
    :mod:`autoseg.losses.maps`), handed in as ``signed_distance [B, C, *spatial]`` or computed
    from ``target`` (with ``spacing``, voxels by default). Ignored voxels add nothing; a class
    absent from the patch has :math:`\phi = 0` and adds 0 (as the reference code). The minimum is a
    perfect prediction (every inside voxel negative, every outside voxel positive); the value is
    negative there, not 0.
    """
    check_reduction(reduction)
    target = check_logits_target(logits, target, ignore_index)
    phi = resolve_map("signed_distance", {} if signed_distance is None else {"signed_distance": signed_distance},
                      target, logits.shape[1], spacing, ignore_index)
    per_class = probabilities(logits) * phi
    per_voxel = select_classes(per_class.movedim(1, -1), include_background).mean(-1)
    return masked_voxel_mean(per_voxel, valid_mask(target, ignore_index), reduction)


def boundary_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    signed_distance: torch.Tensor | None = None,
    alpha: float = 0.01,
    ignore_index: int | None = None,
    include_background: bool = False,
    batch: bool = False,
    smooth: float = 1e-5,
    spacing: Sequence[float] | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Soft Dice loss + ``alpha`` * :func:`boundary_term`, at a fixed ``alpha`` (the module ramps it).

    Example:
        >>> target = torch.zeros(1, 8, 8, dtype=torch.long)
        >>> target[0, 2:6, 2:6] = 1
        >>> perfect = 20 * torch.nn.functional.one_hot(target, 2).movedim(-1, 1).float()
        >>> float(boundary_loss(perfect, target, alpha=1.0)) < float(boundary_loss(-perfect, target, alpha=1.0))
        True
    """
    check_reduction(reduction)
    region = dice_loss(logits, target, ignore_index, include_background, batch, smooth, reduction)
    term = boundary_term(logits, target, signed_distance, ignore_index, include_background, spacing, reduction)
    if reduction == "none" and batch:
        term = term.mean().reshape(1)
    return region + alpha * term


@register_loss("boundary", category="boundary", function=boundary_loss,
               citation="Kervadec et al. Boundary loss for highly unbalanced segmentation. MIDL 2019 / MedIA 2021 "
                        "(arXiv:1812.07032)")
class BoundaryLoss(RegionLoss):
    """Kervadec's boundary loss with its region partner: soft Dice + alpha * boundary, alpha ramped per epoch.

    ``L = dice + alpha(e) * mean_{c, n} phi_c(n) p_c(n)`` with ``alpha(e) = alpha_start + alpha_step * e``
    (the paper: 0.01, +0.01 per epoch, no cap; ``alpha_max`` caps it), set by the trainer through
    :meth:`on_epoch_start` at each epoch; used standalone without the hook, ``alpha = alpha_start``.
    The paper pairs the term with the generalised Dice loss; autoseg pairs it with soft Dice, its
    region loss (nnU-Net's). Classes follow ``include_background`` in both terms.
    """

    extra_inputs: ClassVar[tuple[str, ...]] = ("signed_distance",)

    def __init__(self, alpha_start: float = 0.01, alpha_step: float = 0.01, alpha_max: float | None = None,
                 spacing: Sequence[float] | None = None, *, include_background: bool = False,
                 batch: bool = False, smooth: float = 1e-5, ignore_index: int | None = None,
                 reduction: str = "mean"):
        super().__init__(include_background=include_background, batch=batch, smooth=smooth,
                         ignore_index=ignore_index, reduction=reduction)
        self.alpha_start = check_positive("alpha_start", alpha_start, allow_zero=True)
        self.alpha_step = check_positive("alpha_step", alpha_step, allow_zero=True)
        self.alpha_max = None if alpha_max is None else check_positive("alpha_max", alpha_max, allow_zero=True)
        self.alpha = self._clip(self.alpha_start)
        self.spacing = check_spacing_argument(spacing)

    def _clip(self, alpha: float) -> float:
        return alpha if self.alpha_max is None else min(alpha, self.alpha_max)

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self.alpha = self._clip(self.alpha_start + self.alpha_step * epoch)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, **extras: torch.Tensor) -> torch.Tensor:
        self.check_inputs(logits, target, extras)
        return boundary_loss(logits, target, extras.get("signed_distance"), self.alpha, self.ignore_index,
                             self.include_background, self.batch, self.smooth, self.spacing, self.reduction)
