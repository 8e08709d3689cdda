"""Boundary difference over union loss (Sun, Luo, Li, MICCAI 2023), its alpha computed on the fly per class."""

from __future__ import annotations

import torch

from autoseg.losses._functional import masked_probabilities, one_hot, probabilities, reduce, select_classes, valid_mask
from autoseg.losses._validation import check_logits_target, check_probability, check_reduction
from autoseg.losses.base import RegionLoss
from autoseg.losses.boundary._morphology import inner_boundary
from autoseg.losses.registry import register_loss


def boundary_dou_alpha(onehot: torch.Tensor, batch: bool = False, smooth: float = 1e-5,
                       alpha_max: float = 0.8) -> torch.Tensor:
    r"""Boundary DoU's :math:`\alpha = \min(1 - 2\,\frac{C + s}{S + s},\ \alpha_{max})` per case and class.

    S is the number of voxels of the class, C the number of them on its boundary: voxels with a face
    neighbour (4 in 2D, 6 in 3D) that is not the class, the image border counting as "not the
    class". This is the official code's definition (it convolves the mask with the cross
    ``[[0,1,0],[1,1,1],[0,1,0]]`` with zero padding and counts mask voxels whose sum is not 5); the
    3D form uses the 6-neighbour cross. Ignored voxels (all-zero one-hot rows) count as "not the class".

    Args:
        onehot: ``[B, C, *spatial]`` one-hot reference (0/1).
        batch: count over the whole batch (``[1, C]``) instead of per case (``[B, C]``).
        smooth: s, as in the official code (1e-5).
        alpha_max: the cap (official code: 0.8).

    Example:
        >>> t = torch.zeros(1, 2, 16, 16)
        >>> t[0, 1, 3:13, 3:13] = 1          # a 10 x 10 square: S = 100, C = 100 - 8 * 8 = 36
        >>> t[0, 0] = 1 - t[0, 1]
        >>> round(float(boundary_dou_alpha(t)[0, 1]), 4)   # 1 - 2 * 36 / 100
        0.28
    """
    spatial = tuple(range(2, onehot.ndim))
    area = onehot.sum(spatial)
    edge = inner_boundary(onehot > 0.5).to(onehot.dtype).sum(spatial)
    if batch:
        area, edge = area.sum(0, keepdim=True), edge.sum(0, keepdim=True)
    alpha = 1 - 2 * (edge + smooth) / (area + smooth)
    return alpha.clamp_max(alpha_max)


def boundary_dou_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha_max: float = 0.8,
    ignore_index: int | None = None,
    include_background: bool = False,
    batch: bool = False,
    smooth: float = 1e-5,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Boundary difference over union loss, per class, averaged over classes.

    .. math::
        L_c = \frac{G \cup P - G \cap P}{G \cup P - \alpha\, G \cap P}
            = \frac{\sum p^2 + \sum t^2 - 2 \sum p t + s}{\sum p^2 + \sum t^2 - (1 + \alpha) \sum p t + s},
        \qquad \alpha = \min\Big(1 - \frac{2C}{S},\ 0.8\Big)

    with the soft set sizes of the official code (:math:`|G \cup P| = \sum p^2 + \sum t^2 - \sum pt`,
    :math:`|G \cap P| = \sum pt`) and α from the boundary size C and area S of the class in the
    reference (:func:`boundary_dou_alpha`): large, compact objects (small C/S) get α near 1, which
    concentrates the loss on the boundary band; thin or small ones get α ≤ 0, a Dice/IoU-like loss.

    Sun, Luo, Li, "Boundary difference over union loss for medical image segmentation", MICCAI 2023
    (arXiv:2308.00220); α capped at 0.8 and s = 1e-5 as the official code (``BoundaryDoULoss`` of
    sunfan-bvb/BoundaryDoULoss). The official code sums over the whole batch and averages over all
    classes, background included: ``batch=True, include_background=True`` reproduces it; autoseg's
    defaults are the library's (per case, background excluded). A class absent from the reference
    of a case scores ``(sum p^2 + s) / (sum p^2 + s) = 1`` whatever is predicted (as in the official
    code): with ``batch=False`` false positives of an absent class are not penalised, so pair it with
    a voxel loss or use ``batch=True``.

    Example:
        >>> target = torch.zeros(1, 12, 12, dtype=torch.long)
        >>> target[0, 3:9, 3:9] = 1
        >>> perfect = 20.0 * torch.nn.functional.one_hot(target, 2).movedim(-1, 1).float()
        >>> float(boundary_dou_loss(perfect, target)) < 1e-6 < float(boundary_dou_loss(perfect.roll(2, -1), target))
        True
    """
    check_reduction(reduction)
    target = check_logits_target(logits, target, ignore_index)
    if not include_background and logits.shape[1] < 2:
        raise ValueError("include_background=False needs at least 2 classes")
    mask = valid_mask(target, ignore_index)
    probs = masked_probabilities(probabilities(logits), mask)
    onehot = one_hot(target, logits.shape[1], mask, probs.dtype)
    spatial = tuple(range(2, logits.ndim))
    sum_pp = (probs * probs).sum(spatial)
    sum_tt = onehot.sum(spatial)  # t * t = t for a one-hot reference
    sum_pt = (probs * onehot).sum(spatial)
    if batch:
        sum_pp, sum_tt, sum_pt = (x.sum(0, keepdim=True) for x in (sum_pp, sum_tt, sum_pt))
    alpha = boundary_dou_alpha(onehot, batch, smooth, alpha_max)
    loss = (sum_pp + sum_tt - 2 * sum_pt + smooth) / (sum_pp + sum_tt - (1 + alpha) * sum_pt + smooth)
    return reduce(select_classes(loss, include_background).mean(1), reduction)


@register_loss("boundary_dou", category="boundary", function=boundary_dou_loss,
               citation="Sun, Luo, Li. Boundary difference over union loss for medical image segmentation. "
                        "MICCAI 2023 (arXiv:2308.00220)")
class BoundaryDoULoss(RegionLoss):
    """Boundary difference over union: (G∪P − G∩P)/(G∪P − α·G∩P), α from the reference's boundary/area ratio."""

    def __init__(self, alpha_max: float = 0.8, *, include_background: bool = False, batch: bool = False,
                 smooth: float = 1e-5, ignore_index: int | None = None, reduction: str = "mean"):
        super().__init__(include_background=include_background, batch=batch, smooth=smooth,
                         ignore_index=ignore_index, reduction=reduction)
        # alpha <= 0.8 keeps the denominator >= 0.1 (sum p^2 + sum t^2) > 0; a cap of 1 would allow 0/0
        self.alpha_max = check_probability("alpha_max", alpha_max, high_open=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return boundary_dou_loss(logits, target, self.alpha_max, **self.region_kwargs())
