"""Combination losses: Combo, nnU-Net's Dice + CE, and any weighted sum ``a+b`` built from the registry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from autoseg.losses._functional import (
    log_probabilities,
    masked_voxel_mean,
    reduce,
    valid_mask,
)
from autoseg.losses._validation import (
    check_extras,
    check_logits_target,
    check_positive,
    check_probability,
    check_reduction,
)
from autoseg.losses.base import RegionLoss, SegmentationLoss
from autoseg.losses.pixel.ce import CrossEntropyLoss
from autoseg.losses.region.dice import DiceLoss, soft_dice_per_class
from autoseg.losses.registry import register_loss


def _log1m_exp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate at both ends (Maechler 2012)."""
    x = x.clamp_max(-1e-7)  # p = 1 exactly would give log(0); keep the loss finite
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def combo_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.5,
    beta: float = 0.5,
    ignore_index: int | None = None,
    include_background: bool = False,
    batch: bool = False,
    smooth: float = 1e-5,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Combo loss (Taghanaki et al., 2019), multi-class form.

    .. math::
        L = \alpha \, L_{CE}^{\beta} + (1 - \alpha) \, L_{Dice}, \qquad
        L_{CE}^{\beta} = -\frac{1}{N} \sum_n \sum_c \big[\beta\, t_{nc} \log p_{nc}
        + (1 - \beta)(1 - t_{nc}) \log(1 - p_{nc})\big]

    The paper's binary β-weighted cross-entropy is applied to every class channel of the softmax
    and summed over classes; β > 0.5 punishes false negatives more, β < 0.5 false positives. With
    β = 1 the first term is the ordinary multi-class cross-entropy, so ``combo(alpha=1, beta=1)``
    equals ``ce`` and ``combo(alpha=0)`` equals ``dice``. The paper subtracts the Dice coefficient;
    here its loss form ``1 - Dice`` is used, which differs by the constant ``1 - alpha``.

    Note: the survey's own code calls a Dice term with no cross-entropy "Combo"; this is the
    original definition.
    """
    check_reduction(reduction)
    target = check_logits_target(logits, target, ignore_index)
    mask = valid_mask(target, ignore_index)
    logp = log_probabilities(logits)
    safe = target if mask is None else torch.where(mask, target, torch.zeros_like(target))
    t = torch.nn.functional.one_hot(safe, logits.shape[1]).movedim(-1, 1).to(logp.dtype)
    per_voxel = -(beta * t * logp + (1 - beta) * (1 - t) * _log1m_exp(logp)).sum(1)
    ce_term = masked_voxel_mean(per_voxel, mask, reduction)
    dice = soft_dice_per_class(logits, target, ignore_index, include_background, batch, smooth)
    dice_term = reduce(1 - dice.mean(1), reduction)
    if reduction == "none" and batch:
        ce_term = ce_term.mean().reshape(1)
    return alpha * ce_term + (1 - alpha) * dice_term


@register_loss("combo", category="combination", function=combo_loss,
               citation="Taghanaki et al. Combo loss. Comput Med Imaging Graph 2019 (arXiv:1805.02798)")
class ComboLoss(RegionLoss):
    """Combo loss: alpha * beta-weighted cross-entropy + (1 - alpha) * soft Dice loss."""

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, *, include_background: bool = False,
                 batch: bool = False, smooth: float = 1e-5, ignore_index: int | None = None,
                 reduction: str = "mean"):
        super().__init__(include_background=include_background, batch=batch, smooth=smooth,
                         ignore_index=ignore_index, reduction=reduction)
        self.alpha = check_probability("alpha", alpha)
        self.beta = check_probability("beta", beta)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return combo_loss(logits, target, self.alpha, self.beta, **self.region_kwargs())


class CompoundLoss(SegmentationLoss):
    """Weighted sum of registered losses, ``sum_i w_i * L_i(logits, target, **extras_i)``.

    Its ``extra_inputs`` are the union of its components' (an instance attribute: the components are
    known only once it is built); each component gets only the extras it declares. The epoch hook
    reaches every component. A compound has no ``ignore_index`` or ``reduction`` of its own: each
    component was built with its own.
    """

    def __init__(self, components: Sequence[tuple[str, nn.Module]], weights: Sequence[float]):
        # nn.Module's constructor, not SegmentationLoss's: the shared arguments live in the components.
        nn.Module.__init__(self)
        if len(components) != len(weights):
            raise ValueError(f"got {len(components)} losses but {len(weights)} weights")
        if not components:
            raise ValueError("a compound loss needs at least one component")
        for n, m in components:
            if not isinstance(m, SegmentationLoss):
                raise TypeError(f"component {n!r} must be a SegmentationLoss, got {type(m).__name__}")
        self.names = [n for n, _ in components]
        self.weights = [check_positive(f"weight of {n!r}", w, allow_zero=True) for n, w in zip(self.names, weights)]
        if not any(self.weights):
            raise ValueError("at least one compound weight must be > 0")
        self.components = nn.ModuleList([m for _, m in components])
        # Instance attributes: they depend on the components (the class attributes stay the base's).
        self.extra_inputs = tuple(dict.fromkeys(x for m in self.components for x in m.extra_inputs))
        self.learnable = any(m.learnable for m in self.components)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, **extras: torch.Tensor) -> torch.Tensor:
        if extras:
            check_extras(f"compound {'+'.join(self.names)!r}", self.extra_inputs, extras, logits)
        total: Any = 0
        for w, loss in zip(self.weights, self.components):
            if w:
                own = {k: v for k, v in extras.items() if k in loss.extra_inputs}
                total = total + w * loss(logits, target, **own)
        return total

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        for loss in self.components:
            loss.on_epoch_start(epoch, num_epochs)

    def extra_repr(self) -> str:
        return f"weights={dict(zip(self.names, self.weights))}"


def _dice_ce(logits: torch.Tensor, target: torch.Tensor, weight_dice: float = 1.0, weight_ce: float = 1.0,
             ignore_index: int | None = None, include_background: bool = False, batch: bool = False,
             smooth: float = 1e-5, reduction: str = "mean") -> torch.Tensor:
    return DiceCELoss(weight_dice, weight_ce, include_background=include_background, batch=batch, smooth=smooth,
                      ignore_index=ignore_index, reduction=reduction)(logits, target)


@register_loss("dice_ce", category="combination", function=_dice_ce,
               citation="Isensee et al. nnU-Net. Nature Methods 2021 (arXiv:1809.10486)")
class DiceCELoss(CompoundLoss):
    """nnU-Net's default: soft Dice (background excluded, batch Dice as planned) + cross-entropy, 1 : 1."""

    def __init__(self, weight_dice: float = 1.0, weight_ce: float = 1.0, *, include_background: bool = False,
                 batch: bool = False, smooth: float = 1e-5, ignore_index: int | None = None,
                 reduction: str = "mean"):
        super().__init__(
            [("dice", DiceLoss(include_background=include_background, batch=batch, smooth=smooth,
                               ignore_index=ignore_index, reduction=reduction)),
             ("ce", CrossEntropyLoss(ignore_index=ignore_index, reduction=reduction))],
            [weight_dice, weight_ce],
        )


dice_ce_loss = _dice_ce


def _dice_topk(logits: torch.Tensor, target: torch.Tensor, weight_dice: float = 1.0, weight_topk: float = 1.0,
               k: float = 10, ignore_index: int | None = None, include_background: bool = False,
               batch: bool = False, smooth: float = 1e-5, reduction: str = "mean") -> torch.Tensor:
    """Soft Dice loss + TopK cross-entropy, ``weight_dice * dice + weight_topk * topk``.

    nnU-Net's ``DC_and_topk_loss`` plus 1 (nnU-Net's Dice term is -Dice); Ma et al., "Loss odyssey in
    medical image segmentation", MedIA 2021, found it among the most robust compounds.

    Example:
        >>> logits = torch.tensor([[[[9.0, -9.0]], [[-9.0, 9.0]]]])
        >>> float(dice_topk_loss(logits, torch.tensor([[[0, 1]]]), k=50)) < 1e-3
        True
    """
    return DiceTopKLoss(weight_dice, weight_topk, k, include_background=include_background, batch=batch,
                        smooth=smooth, ignore_index=ignore_index, reduction=reduction)(logits, target)


@register_loss("dice_topk", category="combination", function=_dice_topk,
               citation="Ma et al. Loss odyssey in medical image segmentation. MedIA 2021 (arXiv:2005.13449); "
                        "nnU-Net's DC_and_topk_loss")
class DiceTopKLoss(CompoundLoss):
    """Soft Dice + TopK cross-entropy, 1 : 1 (nnU-Net's DC_and_topk_loss)."""

    def __init__(self, weight_dice: float = 1.0, weight_topk: float = 1.0, k: float = 10, *,
                 include_background: bool = False, batch: bool = False, smooth: float = 1e-5,
                 ignore_index: int | None = None, reduction: str = "mean"):
        from autoseg.losses.pixel.topk import TopKLoss

        super().__init__(
            [("dice", DiceLoss(include_background=include_background, batch=batch, smooth=smooth,
                               ignore_index=ignore_index, reduction=reduction)),
             ("topk", TopKLoss(k=k, ignore_index=ignore_index, reduction=reduction))],
            [weight_dice, weight_topk],
        )


def _dice_focal(logits: torch.Tensor, target: torch.Tensor, weight_dice: float = 1.0, weight_focal: float = 1.0,
                gamma: float = 2.0, alpha: Any = None, ignore_index: int | None = None,
                include_background: bool = False, batch: bool = False, smooth: float = 1e-5,
                reduction: str = "mean") -> torch.Tensor:
    """Soft Dice loss + focal loss, ``weight_dice * dice + weight_focal * focal``.

    Zhu et al., "AnatomyNet", Med. Phys. 2019 (their form: Dice + focal, 1 : 1).

    Example:
        >>> logits = torch.tensor([[[[9.0, -9.0]], [[-9.0, 9.0]]]])
        >>> float(dice_focal_loss(logits, torch.tensor([[[0, 1]]]))) < 1e-3
        True
    """
    return DiceFocalLoss(weight_dice, weight_focal, gamma, alpha, include_background=include_background, batch=batch,
                         smooth=smooth, ignore_index=ignore_index, reduction=reduction)(logits, target)


@register_loss("dice_focal", category="combination", function=_dice_focal,
               citation="Zhu et al. AnatomyNet. Med Phys 2019 (arXiv:1808.05238)")
class DiceFocalLoss(CompoundLoss):
    """Soft Dice + focal loss, 1 : 1."""

    def __init__(self, weight_dice: float = 1.0, weight_focal: float = 1.0, gamma: float = 2.0, alpha: Any = None,
                 *, include_background: bool = False, batch: bool = False, smooth: float = 1e-5,
                 ignore_index: int | None = None, reduction: str = "mean"):
        from autoseg.losses.pixel.focal import FocalLoss

        super().__init__(
            [("dice", DiceLoss(include_background=include_background, batch=batch, smooth=smooth,
                               ignore_index=ignore_index, reduction=reduction)),
             ("focal", FocalLoss(gamma=gamma, alpha=alpha, ignore_index=ignore_index, reduction=reduction))],
            [weight_dice, weight_focal],
        )


dice_topk_loss = _dice_topk
dice_focal_loss = _dice_focal
