"""Lovász-Softmax loss (Berman et al., 2018): a convex surrogate of the Jaccard loss, per class."""

from __future__ import annotations

import torch

from autoseg.losses._functional import one_hot, probabilities, reduce, valid_mask
from autoseg.losses._validation import check_logits_target, check_reduction
from autoseg.losses.base import RegionLoss
from autoseg.losses.registry import register_loss

_CLASSES = ("present", "all")


def check_classes(classes: str) -> str:
    if classes not in _CLASSES:
        raise ValueError(f"classes must be one of {_CLASSES}, got {classes!r}")
    return classes


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss at ground truth sorted by decreasing error.

    Works on the last axis of any batch of sequences (Berman et al., Algorithm 1).
    """
    gts = gt_sorted.sum(-1, keepdim=True)
    intersection = gts - gt_sorted.cumsum(-1)
    union = gts + (1 - gt_sorted).cumsum(-1)  # >= 1 everywhere, so no division by zero
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)


def lovasz_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    classes: str = "present",
    ignore_index: int | None = None,
    include_background: bool = True,
    batch: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Lovász-Softmax loss.

    For each class c, the errors :math:`e_n = |t_{nc} - p_{nc}|` of the counted voxels are sorted in
    decreasing order and dotted with the gradient of the Lovász extension of the Jaccard loss
    evaluated at the correspondingly sorted ground truth:

    .. math:: L_c = \sum_i e_{\pi(i)} \big[J(\pi_{1..i}) - J(\pi_{1..i-1})\big],\qquad
              J(S) = 1 - \frac{|G_c \setminus S|}{|G_c \cup S|} \text{ (as in the reference code)}

    and the loss is the mean of :math:`L_c` over the classes present in the reference
    (``classes="present"``, the paper's default; 0 if none is) or over all kept classes
    (``classes="all"``). Berman, Triki, Blaschko, "The Lovász-Softmax loss", CVPR 2018
    (arXiv:1705.08790). Voxels labelled ``ignore_index`` are left out of the sort (they are sorted
    last with zero error, which leaves every other term unchanged).

    Two defaults differ from the other region losses, to follow the paper: ``batch=True`` (the
    paper's ``per_image=False``: one sort over the whole batch; ``batch=False`` sorts per image),
    and ``include_background=True`` (the background channel is where false positives of the
    other classes show; without it an image with no foreground scores 0 whatever the prediction).
    The sort runs per class on the tensor, no Python loop.

    Example:
        >>> logits = torch.tensor([[[[0.0, 0.0]], [[0.0, 0.0]]]])  # p = 0.5 everywhere
        >>> target = torch.tensor([[[0, 1]]])
        >>> round(float(lovasz_loss(logits, target)), 4)  # per class: 0.5 * 1/2 + 0.5 * 1/2
        0.5
    """
    check_reduction(reduction)
    check_classes(classes)
    target = check_logits_target(logits, target, ignore_index)
    mask = valid_mask(target, ignore_index)
    probs = probabilities(logits)
    num_classes = probs.shape[1]
    t = one_hot(target, num_classes, mask, probs.dtype)
    b = probs.shape[0]
    errors = (t - probs).abs().reshape(b, num_classes, -1)
    t = t.reshape(b, num_classes, -1)
    if mask is not None:
        # -1 sorts below every real error; clamped back to 0 it adds nothing and gets no gradient.
        errors = torch.where(mask.reshape(b, 1, -1), errors, torch.full_like(errors, -1.0))
    if batch:
        errors = errors.transpose(0, 1).reshape(1, num_classes, -1)
        t = t.transpose(0, 1).reshape(1, num_classes, -1)
    if not include_background:
        errors, t = errors[:, 1:], t[:, 1:]
    errors_sorted, perm = torch.sort(errors, dim=-1, descending=True)
    gt_sorted = torch.gather(t, -1, perm)
    per_class = (errors_sorted.clamp_min(0) * lovasz_grad(gt_sorted)).sum(-1)  # [B or 1, C']
    if classes == "all":
        per_case = per_class.mean(1)
    else:
        present = (t.sum(-1) > 0).to(per_class.dtype)
        per_case = (per_class * present).sum(1) / present.sum(1).clamp_min(1)
    return reduce(per_case, reduction)


@register_loss("lovasz", category="region", function=lovasz_loss,
               citation="Berman, Triki, Blaschko. The Lovasz-Softmax loss: a tractable surrogate for the "
                        "optimization of the intersection-over-union measure. CVPR 2018 (arXiv:1705.08790)")
class LovaszLoss(RegionLoss):
    """Lovász-Softmax loss: convex surrogate of the Jaccard loss, averaged over present classes."""

    def __init__(self, classes: str = "present", *, include_background: bool = True, batch: bool = True,
                 ignore_index: int | None = None, reduction: str = "mean"):
        # No smooth argument: the Lovász extension has no ratio to smooth.
        super().__init__(include_background=include_background, batch=batch, smooth=0.0,
                         ignore_index=ignore_index, reduction=reduction)
        self.classes = check_classes(classes)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return lovasz_loss(logits, target, self.classes, ignore_index=self.ignore_index,
                           include_background=self.include_background, batch=self.batch, reduction=self.reduction)
