"""Region Mutual Information loss (Zhao et al., 2019): a lower bound of the MI of label and prediction patches."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from autoseg.losses._functional import (
    gathered_log_probabilities,
    masked_voxel_mean,
    one_hot,
    probabilities,
    reduce,
    valid_mask,
)
from autoseg.losses._validation import check_bool, check_logits_target, check_probability, check_reduction
from autoseg.losses.base import SegmentationLoss
from autoseg.losses.registry import register_loss

# Added to covariance matrices before inversion and Cholesky, as the reference code (_POS_ALPHA).
_POS_ALPHA = 5e-4


def check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _pool(x: torch.Tensor, factors: tuple[int, ...]) -> torch.Tensor:
    """Window means of ``x`` over ``factors``-sized windows placed as the reference code's.

    The reference code (Zhao et al.'s ``rmi.py``, ``rmi_pool_way=1``) average-pools with
    ``padding=pool_size // 2``: border voxels fall into windows that hang over the edge, and an axis
    of ``s`` voxels gives ``s // f + 1`` cells for an even factor ``f``. Callers divide two such pools
    (values over counted voxels), so the padding counts as ignored voxels, not as zeros in the mean.
    """
    if all(f == 1 for f in factors):
        return x
    pool = F.avg_pool2d if x.ndim == 4 else F.avg_pool3d
    return pool(x, kernel_size=factors, stride=factors, padding=tuple(f // 2 for f in factors))


def _cells(size: int, factor: int) -> int:
    """Number of pooled cells along an axis of ``size`` voxels (avg_pool's count with padding factor // 2)."""
    return (size + 2 * (factor // 2) - factor) // factor + 1


def _factor(size: int, pool: int, radius: int) -> int:
    # The largest factor up to ``pool`` that still leaves ``radius`` cells (1 when none does).
    return next((f for f in range(pool, 1, -1) if _cells(size, f) >= radius), 1)


def rmi_lower_bound(
    probs: torch.Tensor, onehot: torch.Tensor, mask: torch.Tensor | None, radius: int, pool: int
) -> torch.Tensor:
    """``0.5 log det(Sigma_{Y|P}) / d`` per case and class ``[B, C]`` (d = neighbourhood size).

    ``probs`` and ``onehot`` are ``[B, C, *spatial]``; ``mask`` ``[B, *spatial]`` marks counted voxels.
    """
    spatial = probs.shape[2:]
    # Down-sample by ``pool`` (average over windows placed as the reference code's, padding pool // 2),
    # less on axes that would keep fewer than ``radius`` cells.
    factors = tuple(_factor(s, pool, radius) for s in spatial)
    w = torch.ones_like(probs[:, :1]) if mask is None else mask.unsqueeze(1).to(probs.dtype)
    w_pooled = _pool(w, factors)
    norm = w_pooled.clamp_min(torch.finfo(probs.dtype).tiny)
    # Cell values are means over their counted voxels; a cell with none is left out below.
    p = _pool(probs * w, factors) / norm
    t = _pool(onehot * w, factors) / norm
    valid = (w_pooled > 0).to(probs.dtype)
    cells = p.shape[2:]
    radii = tuple(min(radius, s) for s in cells)
    out = tuple(s - r + 1 for s, r in zip(cells, radii))

    def crops(x: torch.Tensor) -> torch.Tensor:
        # [B, C, d, M]: every voxel's neighbourhood as a d-vector (d = prod(radii)), M positions.
        parts = [x[(..., *(slice(o, o + n) for o, n in zip(offset, out)))]
                 for offset in itertools.product(*(range(r) for r in radii))]
        return torch.stack(parts, 2).flatten(3)

    # float64 for the covariances, inverse and Cholesky, as the reference code.
    pv, tv = crops(p).double(), crops(t).double()
    vv = crops(valid).double().prod(2, keepdim=True)  # [B, 1, 1, M]: whole neighbourhood counted
    count = vv.sum(-1, keepdim=True).clamp_min(1)
    pv = (pv - (pv * vv).sum(-1, keepdim=True) / count) * vv
    tv = (tv - (tv * vv).sum(-1, keepdim=True) / count) * vv
    d = pv.shape[2]
    # The reference code adds _POS_ALPHA * I to scatter matrices (covariance x count); dividing both by the
    # count gives the same gradients without its 0.5 log(count) offset, which made values depend on size.
    reg = (_POS_ALPHA / count) * torch.eye(d, dtype=pv.dtype, device=pv.device)
    t_cov = tv @ tv.transpose(-1, -2) / count
    p_cov = pv @ pv.transpose(-1, -2) / count
    tp_cov = tv @ pv.transpose(-1, -2) / count
    cond = t_cov - tp_cov @ torch.linalg.solve(p_cov + reg, tp_cov.transpose(-1, -2))
    cond = 0.5 * (cond + cond.transpose(-1, -2)) + reg
    chol = torch.linalg.cholesky_ex(cond).L  # positive definite by construction; _ex avoids a device sync
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    return (0.5 * logdet / d).to(probs.dtype)


def rmi_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    radius: int = 3,
    pool: int = 4,
    ce_weight: float = 0.5,
    ignore_index: int | None = None,
    include_background: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Region Mutual Information loss, added to cross-entropy.

    .. math:: L = \lambda\, L_{CE} + (1 - \lambda) \sum_c \frac{1}{2d}
              \log\det\big(\Sigma_{Y|P} + \tfrac{\epsilon}{M} I\big), \quad
              \Sigma_{Y|P} = \Sigma_Y - \Sigma_{YP} (\Sigma_P + \tfrac{\epsilon}{M} I)^{-1} \Sigma_{YP}^T

    Zhao, Wang, Cai, Liu, "Region mutual information loss for semantic segmentation", NeurIPS 2019
    (arXiv:1910.12037). Per class, after average-pooling by ``pool``, every cell and its
    ``radius``-wide neighbours (3 x 3 in 2D, 3 x 3 x 3 in 3D: d = 9 or 27) form a vector; the
    covariances of label and probability vectors give the conditional covariance, whose log
    determinant is minus a lower bound of the mutual information (up to a constant). λ =
    ``ce_weight`` = 0.5 as the reference code's default; ``ce_weight=0`` is RMI alone, which is
    invariant to affine maps of the prediction (an inverted prediction scores as well as a perfect
    one), hence the cross-entropy. The RMI term is SUMMED over the kept classes, as the reference
    code (``_IS_SUM = 1``): with λ = 0.5 the CE : RMI balance is the reference's, and the RMI
    term's weight grows with the number of classes (averaging would divide it by C).

    M is the number of neighbourhood vectors and ε = 5e-4 (the reference code adds ε I to scatter
    matrices, i.e. M x covariances: dividing both by M keeps its gradients exactly and drops its
    ``0.5 log M`` offset, so values do not depend on the image size).

    Deviations from the reference code, each documented in docs/losses.md: probabilities are the
    softmax and the added term is the softmax cross-entropy (the code takes a sigmoid per channel and
    adds the per-channel binary cross-entropy);
    ignored voxels are left out of the pooled cells and every neighbourhood touching an all-ignored
    cell is left out of the covariances (the code zeroes them, so they still count as vectors);
    pooling windows are placed as the code's (``padding = pool // 2``) but a cell is the mean over
    its real voxels (the code's ``avg_pool2d`` counts the zero padding, diluting border cells);
    axes too short for ``pool`` are pooled less and axes with fewer than ``radius`` cells use a
    shorter neighbourhood, so small deep-supervision outputs never fail. ``reduction`` acts on
    per-case values.

    Example:
        >>> logits = torch.zeros(1, 2, 12, 12)
        >>> target = torch.zeros(1, 12, 12, dtype=torch.long)
        >>> target[:, 4:8, 4:8] = 1
        >>> perfect = rmi_loss(logits + 20 * torch.nn.functional.one_hot(target, 2).movedim(-1, 1), target)
        >>> bool(perfect < rmi_loss(logits, target))
        True
    """
    check_reduction(reduction)
    radius = check_int("radius", radius, 1)
    pool = check_int("pool", pool, 1)
    ce_weight = check_probability("ce_weight", ce_weight)
    target = check_logits_target(logits, target, ignore_index)
    mask = valid_mask(target, ignore_index)
    probs = probabilities(logits)
    onehot = one_hot(target, probs.shape[1], mask, probs.dtype)
    per_class = rmi_lower_bound(probs, onehot, mask, radius, pool)
    if not include_background:
        per_class = per_class[:, 1:]
    rmi = reduce(per_class.sum(1), reduction)  # summed over classes, as the reference code (_IS_SUM = 1)
    if ce_weight == 0:
        return rmi
    logp, _ = gathered_log_probabilities(logits, target, mask)
    ce = masked_voxel_mean(-logp, mask, reduction)
    return ce_weight * ce + (1 - ce_weight) * rmi


@register_loss("rmi", category="region", function=rmi_loss,
               citation="Zhao, Wang, Cai, Liu. Region mutual information loss for semantic segmentation. "
                        "NeurIPS 2019 (arXiv:1910.12037)")
class RMILoss(SegmentationLoss):
    """Region Mutual Information loss: CE plus 0.5 log det of the label covariance given the prediction."""

    def __init__(self, radius: int = 3, pool: int = 4, ce_weight: float = 0.5, *, include_background: bool = True,
                 ignore_index: int | None = None, reduction: str = "mean"):
        # A SegmentationLoss, not a RegionLoss: RMI is per case (no batch) and has no ratio to smooth.
        super().__init__(ignore_index=ignore_index, reduction=reduction)
        self.radius = check_int("radius", radius, 1)
        self.pool = check_int("pool", pool, 1)
        self.ce_weight = check_probability("ce_weight", ce_weight)
        self.include_background = check_bool("include_background", include_background)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return rmi_loss(logits, target, self.radius, self.pool, self.ce_weight, ignore_index=self.ignore_index,
                        include_background=self.include_background, reduction=self.reduction)
