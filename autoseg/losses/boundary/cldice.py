"""Soft clDice (Shit et al., CVPR 2021): topology-aware Dice of soft skeletons, combined with soft Dice."""

from __future__ import annotations

from typing import ClassVar

import torch

from autoseg.losses._functional import masked_probabilities, one_hot, probabilities, reduce, valid_mask
from autoseg.losses._validation import check_logits_target, check_probability, check_reduction
from autoseg.losses.base import RegionLoss
from autoseg.losses.boundary._morphology import soft_skeleton
from autoseg.losses.maps import resolve_map, skeleton_from_levels
from autoseg.losses.region.dice import soft_dice_per_class
from autoseg.losses.registry import register_loss


def _check_iterations(iterations: int) -> int:
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative integer, got {iterations!r}")
    return iterations


def soft_cldice_per_class(
    logits: torch.Tensor,
    target: torch.Tensor,
    iterations: int = 3,
    ignore_index: int | None = None,
    include_background: bool = False,
    batch: bool = False,
    smooth: float = 1.0,
    skeleton_level: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Soft clDice coefficient ``[B, C']`` (``[1, C']`` with ``batch``) of the classes kept.

    .. math::
        T_{prec} = \frac{\sum S_P\, t + s}{\sum S_P + s},\quad
        T_{sens} = \frac{\sum S_T\, p + s}{\sum S_T + s},\quad
        \text{clDice} = \frac{2\, T_{prec} T_{sens}}{T_{prec} + T_{sens}}

    with :math:`S_P, S_T` the soft skeletons (:func:`~autoseg.losses.boundary._morphology.soft_skeleton`)
    of the class probability and of the one-hot reference. Ignored voxels are 0 in p and t before
    skeletonisation (so they erode like background) and add to no sum.

    ``skeleton_level`` (``[B, C, *spatial]``, the map kind of :mod:`autoseg.losses.maps` that nnU-Net's
    workers compute) gives :math:`S_T` without skeletonising the reference here: the same numbers
    (the reference is binary), computed once per patch in the data workers.
    """
    target = check_logits_target(logits, target, ignore_index)
    if not include_background and logits.shape[1] < 2:
        raise ValueError("include_background=False needs at least 2 classes")
    mask = valid_mask(target, ignore_index)
    probs = masked_probabilities(probabilities(logits), mask)
    onehot = one_hot(target, logits.shape[1], mask, probs.dtype)
    if skeleton_level is not None:
        level = resolve_map("skeleton_level", {"skeleton_level": skeleton_level}, target, logits.shape[1])
        skel_true = skeleton_from_levels(level, iterations, probs.dtype)
    if not include_background:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
        if skeleton_level is not None:
            skel_true = skel_true[:, 1:]
    skel_pred = soft_skeleton(probs, iterations)
    if skeleton_level is None:
        with torch.no_grad():
            # contiguous like the workers' map: the same memory order gives the same round-off in backward
            skel_true = soft_skeleton(onehot.contiguous(), iterations)
    if mask is not None:
        # erosions never raise a 0 voxel, so this only guards against round-off
        keep = mask.unsqueeze(1).to(probs.dtype)
        skel_pred, skel_true = skel_pred * keep, skel_true * keep
    spatial = tuple(range(2, logits.ndim))
    sums = [(skel_pred * onehot).sum(spatial), skel_pred.sum(spatial), (skel_true * probs).sum(spatial),
            skel_true.sum(spatial)]
    if batch:
        sums = [x.sum(0, keepdim=True) for x in sums]
    tprec = (sums[0] + smooth) / (sums[1] + smooth)
    tsens = (sums[2] + smooth) / (sums[3] + smooth)
    return 2 * tprec * tsens / (tprec + tsens).clamp_min(torch.finfo(tprec.dtype).tiny)


def cldice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.5,
    iterations: int = 3,
    ignore_index: int | None = None,
    include_background: bool = False,
    batch: bool = False,
    smooth: float = 1.0,
    reduction: str = "mean",
    skeleton_level: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Soft Dice + soft clDice loss, :math:`(1 - \alpha) L_{Dice} + \alpha (1 - \text{clDice})`.

    Both terms are per class, averaged over the kept classes (background excluded unless
    ``include_background``), per case unless ``batch`` (sums over the batch before the ratios);
    the Dice term is :math:`1 - (2\sum pt + s)/(\sum p + \sum t + s)`.
    clDice is the harmonic mean of topology precision (the predicted soft skeleton inside the
    reference) and topology sensitivity (the reference skeleton covered by the prediction), see
    :func:`soft_cldice_per_class`; a broken or missing tube loses a piece of the reference skeleton,
    which Dice barely notices.

    Shit et al., "clDice - a novel topology-preserving loss function for tubular structure
    segmentation", CVPR 2021 (arXiv:2003.07311). Defaults as the official code
    (jocpae/clDice, ``soft_dice_cldice``): α = 0.5, 3 skeletonisation iterations, s = 1; the
    paper asks for at least as many iterations as the largest tube radius in voxels. The official
    code pools all foreground channels and the batch into one ratio; here each class has its own
    (``batch=True`` pools the batch), so a multi-class problem does not mix the skeletons of classes.
    Inside nnU-Net the reference's skeleton comes from the data workers (``skeleton_level``, the
    same numbers); standalone it is computed here from ``target``.

    Example:
        >>> target = torch.zeros(1, 16, 16, dtype=torch.long)
        >>> target[0, 7:9, 1:15] = 1                       # a thin horizontal tube
        >>> onehot = torch.nn.functional.one_hot(target, 2).movedim(-1, 1).float()
        >>> broken = onehot.clone()
        >>> broken[0, :, 7:9, 7:9] = torch.tensor([1.0, 0.0])[:, None, None]   # cut in the middle
        >>> float(cldice_loss(20 * onehot, target)) < float(cldice_loss(20 * broken, target))
        True
    """
    check_reduction(reduction)
    alpha = check_probability("alpha", alpha)
    iterations = _check_iterations(iterations)
    cl = soft_cldice_per_class(logits, target, iterations, ignore_index, include_background, batch, smooth,
                               skeleton_level)
    dice = soft_dice_per_class(logits, target, ignore_index, include_background, batch, smooth)
    per_case = (1 - alpha) * (1 - dice.mean(1)) + alpha * (1 - cl.mean(1))
    return reduce(per_case, reduction)


@register_loss("cldice", category="boundary", function=cldice_loss,
               citation="Shit et al. clDice - a novel topology-preserving loss function for tubular structure "
                        "segmentation. CVPR 2021 (arXiv:2003.07311)")
class ClDiceLoss(RegionLoss):
    """Soft Dice + soft clDice (skeleton-based topology precision and sensitivity), (1 - α)·Dice + α·clDice."""

    #: the reference's skeleton, computed by nnU-Net's augmentation workers (standalone: from the target)
    extra_inputs: ClassVar[tuple[str, ...]] = ("skeleton_level",)

    def __init__(self, alpha: float = 0.5, iterations: int = 3, *, include_background: bool = False,
                 batch: bool = False, smooth: float = 1.0, ignore_index: int | None = None,
                 reduction: str = "mean"):
        super().__init__(include_background=include_background, batch=batch, smooth=smooth,
                         ignore_index=ignore_index, reduction=reduction)
        self.alpha = check_probability("alpha", alpha)
        self.iterations = _check_iterations(iterations)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, **extras: torch.Tensor) -> torch.Tensor:
        self.check_inputs(logits, target, extras)
        return cldice_loss(logits, target, self.alpha, self.iterations, **self.region_kwargs(),
                           skeleton_level=extras.get("skeleton_level"))
