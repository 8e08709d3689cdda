"""Skeleton Recall loss (Kirchhoff et al., ECCV 2024): soft recall of the ground truth's tubed skeleton."""

from __future__ import annotations

from typing import ClassVar

import torch

from autoseg.losses._functional import masked_probabilities, probabilities, reduce, select_classes, valid_mask
from autoseg.losses._validation import check_logits_target, check_positive, check_reduction
from autoseg.losses.base import RegionLoss
from autoseg.losses.maps import resolve_map
from autoseg.losses.pixel.ce import cross_entropy
from autoseg.losses.region.dice import dice_loss
from autoseg.losses.registry import register_loss


def skeleton_recall_term(
    logits: torch.Tensor,
    target: torch.Tensor,
    tubed_skeleton: torch.Tensor | None = None,
    ignore_index: int | None = None,
    include_background: bool = False,
    batch: bool = False,
    smooth: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""1 minus the class-averaged soft recall of the tubed skeleton :math:`s_c`.

    .. math:: L = 1 - \frac{1}{|C'|}\sum_c \frac{\sum_n p_c(n) s_c(n) + \text{smooth}}{\sum_n s_c(n) + \text{smooth}}

    Kirchhoff, Rokuss, Roy, Kovacs, Ulrich, Wald, Zenk, Vollmuth, Kleesiek, Isensee, Maier-Hein,
    "Skeleton Recall Loss for Connectivity Conserving and Resource Efficient Segmentation of Thin
    Tubular Structures", ECCV 2024 (arXiv 2404.03010). ``s`` is the ``tubed_skeleton`` map
    (skeleton dilated twice, cut to the class; :mod:`autoseg.losses.maps`), handed in or computed
    from ``target``. Their code skeletonises the union of all foreground classes and labels it
    afterwards; autoseg skeletonises each class (the same for one foreground class). Their loss is
    ``-recall``; ``1 - recall`` differs by a constant and makes a perfect prediction 0. A class
    without skeleton voxels scores recall 1 (smooth / smooth). The registered loss adds it to
    nnU-Net's Dice + CE, as the paper (:func:`skeleton_recall_loss`).
    """
    check_reduction(reduction)
    check_positive("smooth", smooth)
    target = check_logits_target(logits, target, ignore_index)
    mask = valid_mask(target, ignore_index)
    skel = resolve_map("tubed_skeleton", {} if tubed_skeleton is None else {"tubed_skeleton": tubed_skeleton},
                       target, logits.shape[1], None, ignore_index)
    if mask is not None:
        skel = skel * mask.unsqueeze(1).to(skel.dtype)
    probs = masked_probabilities(probabilities(logits), mask)
    axes = tuple(range(2, probs.ndim))
    inter = (probs * skel).sum(axes)
    total = skel.sum(axes)
    if batch:
        inter, total = inter.sum(0, keepdim=True), total.sum(0, keepdim=True)
    recall = select_classes((inter + smooth) / (total + smooth), include_background)
    return reduce(1 - recall.mean(1), reduction)


def skeleton_recall_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    tubed_skeleton: torch.Tensor | None = None,
    weight: float = 1.0,
    ignore_index: int | None = None,
    include_background: bool = False,
    batch: bool = False,
    smooth: float = 1e-5,
    smooth_recall: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Kirchhoff et al.'s training loss: soft Dice + CE + ``weight`` * (1 - skeleton recall).

    Dice uses ``smooth`` (nnU-Net's 1e-5), the recall ``smooth_recall`` (1, the reference code's).

    Example:
        >>> target = torch.zeros(1, 9, 9, dtype=torch.long)
        >>> target[0, 4, 1:8] = 1  # a thin line: its tubed skeleton is the line
        >>> perfect = 20 * torch.nn.functional.one_hot(target, 2).movedim(-1, 1).float()
        >>> round(float(skeleton_recall_term(perfect, target)), 6)
        0.0
        >>> round(float(skeleton_recall_term(-perfect, target)), 3)  # no skeleton voxel recalled
        0.875
    """
    region = dice_loss(logits, target, ignore_index, include_background, batch, smooth, reduction)
    ce = cross_entropy(logits, target, None, ignore_index, reduction)
    term = skeleton_recall_term(logits, target, tubed_skeleton, ignore_index, include_background, batch,
                                smooth_recall, reduction)
    if reduction == "none" and batch:
        ce = ce.mean().reshape(1)
    return region + ce + weight * term


@register_loss("skeleton_recall", category="boundary", function=skeleton_recall_loss,
               citation="Kirchhoff et al. Skeleton Recall Loss for connectivity conserving and resource efficient "
                        "segmentation of thin tubular structures. ECCV 2024 (arXiv:2404.03010)")
class SkeletonRecallLoss(RegionLoss):
    """Skeleton Recall: Dice + CE + weight * (1 - soft recall of the ground truth's tubed skeleton), per class."""

    extra_inputs: ClassVar[tuple[str, ...]] = ("tubed_skeleton",)

    def __init__(self, weight: float = 1.0, smooth_recall: float = 1.0, *, include_background: bool = False,
                 batch: bool = False, smooth: float = 1e-5, ignore_index: int | None = None,
                 reduction: str = "mean"):
        super().__init__(include_background=include_background, batch=batch, smooth=smooth,
                         ignore_index=ignore_index, reduction=reduction)
        self.weight = check_positive("weight", weight, allow_zero=True)
        self.smooth_recall = check_positive("smooth_recall", smooth_recall)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, **extras: torch.Tensor) -> torch.Tensor:
        self.check_inputs(logits, target, extras)
        return skeleton_recall_loss(logits, target, extras.get("tubed_skeleton"), self.weight, self.ignore_index,
                                    self.include_background, self.batch, self.smooth, self.smooth_recall,
                                    self.reduction)
