"""Exponential logarithmic loss (Wong et al., 2018): powers of -log Dice and -log p, for small structures."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from autoseg.losses._functional import (
    gathered_log_probabilities,
    masked_probabilities,
    masked_voxel_mean,
    one_hot,
    probabilities,
    reduce,
    safe_pow,
    select_classes,
    soft_counts,
    valid_mask,
)
from autoseg.losses._validation import check_logits_target, check_positive, check_reduction
from autoseg.losses.base import RegionLoss
from autoseg.losses.pixel.ce import _class_weights
from autoseg.losses.registry import register_loss


def _check(w_dice: float, w_ce: float, gamma_dice: float, gamma_ce: float) -> tuple[float, ...]:
    w_dice = check_positive("w_dice", w_dice, allow_zero=True)
    w_ce = check_positive("w_ce", w_ce, allow_zero=True)
    if w_dice + w_ce == 0:
        raise ValueError("w_dice and w_ce cannot both be 0")
    return w_dice, w_ce, check_positive("gamma_dice", gamma_dice), check_positive("gamma_ce", gamma_ce)


def exp_log_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    w_dice: float = 0.8,
    w_ce: float = 0.2,
    gamma_dice: float = 0.3,
    gamma_ce: float = 0.3,
    weight: Sequence[float] | None = None,
    ignore_index: int | None = None,
    include_background: bool = True,
    batch: bool = False,
    smooth: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Exponential logarithmic loss.

    .. math:: L = w_{dice}\, \frac{1}{|C|}\sum_c \big(-\ln \mathrm{Dice}_c\big)^{\gamma_{dice}}
              + w_{ce}\, \frac{1}{N}\sum_n w_{y_n} \big(-\ln p_n^{y_n}\big)^{\gamma_{ce}},\qquad
              \mathrm{Dice}_c = \frac{2\sum_n p_{nc} t_{nc} + s}{\sum_n p_{nc} + \sum_n t_{nc} + s}

    Wong, Moradi, Tang, Syeda-Mahmood, "3D segmentation with exponential logarithmic loss for
    highly unbalanced object sizes", MICCAI 2018 (arXiv:1809.00076). The logarithms are of the Dice
    coefficients and of the probabilities (the survey prints logs of the losses). Defaults as the
    paper: weights 0.8 / 0.2, both γ = 0.3, smoothing ``s = 1`` (the paper's pseudocount; with a
    tiny ``s`` an absent class that is predicted a little has Dice near 0 and ``-ln`` near 12).
    ``weight`` are the optional per-class weights :math:`w_l` (the paper uses
    :math:`((\sum_k f_k)/f_l)^{0.5}`, f the label frequencies); the voxel mean is not normalised
    by them. ``include_background=True`` by default, unlike the Dice-type losses: Wong et al. average
    the Dice term over all labels, background included. Powers below 1 have an infinite slope at 0;
    below 1e-6 they are continued linearly (:func:`~autoseg.losses._functional.safe_pow`), which
    changes a term whose base is below 1e-6 by up to 6.6e-3 at γ = 0.3.

    Example:
        >>> logits = torch.tensor([[[[9.0, -9.0]], [[-9.0, 9.0]]]])
        >>> float(exp_log_loss(logits, torch.tensor([[[0, 1]]]))) < 0.01
        True
    """
    check_reduction(reduction)
    w_dice, w_ce, gamma_dice, gamma_ce = _check(w_dice, w_ce, gamma_dice, gamma_ce)
    smooth = check_positive("smooth", smooth, allow_zero=True)
    target = check_logits_target(logits, target, ignore_index)
    mask = valid_mask(target, ignore_index)
    probs = masked_probabilities(probabilities(logits), mask)
    tp, fp, fn = soft_counts(probs, one_hot(target, logits.shape[1], mask, probs.dtype), batch)
    dice = select_classes((2 * tp + smooth) / (2 * tp + fp + fn + smooth).clamp_min(1e-8), include_background)
    # Dice is > 0 with s > 0; the clamp only guards s = 0 with an absent class.
    dice_term = reduce(safe_pow(-torch.log(dice.clamp_min(1e-12)), gamma_dice).mean(1), reduction)
    logp, safe = gathered_log_probabilities(logits, target, mask)
    per_voxel = safe_pow(-logp, gamma_ce)
    w = _class_weights(weight, logits.shape[1], logp)
    if w is not None:
        per_voxel = per_voxel * w[safe]
    ce_term = masked_voxel_mean(per_voxel, mask, reduction)
    if reduction == "none" and batch:
        ce_term = ce_term.mean().reshape(1)
    return w_dice * dice_term + w_ce * ce_term


@register_loss("exp_log", category="combination", function=exp_log_loss,
               citation="Wong, Moradi, Tang, Syeda-Mahmood. 3D segmentation with exponential logarithmic loss "
                        "for highly unbalanced object sizes. MICCAI 2018 (arXiv:1809.00076)")
class ExpLogLoss(RegionLoss):
    """Exponential logarithmic loss: w_dice E[(-ln Dice_c)^g] + w_ce E[w_y (-ln p_y)^g]."""

    def __init__(self, w_dice: float = 0.8, w_ce: float = 0.2, gamma_dice: float = 0.3, gamma_ce: float = 0.3,
                 weight: Sequence[float] | None = None, *, include_background: bool = True, batch: bool = False,
                 smooth: float = 1.0, ignore_index: int | None = None, reduction: str = "mean"):
        super().__init__(include_background=include_background, batch=batch, smooth=smooth,
                         ignore_index=ignore_index, reduction=reduction)
        self.w_dice, self.w_ce, self.gamma_dice, self.gamma_ce = _check(w_dice, w_ce, gamma_dice, gamma_ce)
        self.weight = None if weight is None else [float(x) for x in weight]
        if self.weight is not None and any(not (0 <= x < float("inf")) for x in self.weight):
            raise ValueError(f"weight must be finite and non-negative, got {self.weight}")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return exp_log_loss(logits, target, self.w_dice, self.w_ce, self.gamma_dice, self.gamma_ce, self.weight,
                            **self.region_kwargs())
