"""Active boundary loss (Wang et al., AAAI 2022), added to cross-entropy: moves predicted boundaries towards the true ones."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F

from autoseg.losses._functional import log_probabilities, valid_mask
from autoseg.losses._validation import check_extras, check_logits_target, check_positive, check_probability, check_reduction
from autoseg.losses.base import SegmentationLoss
from autoseg.losses.boundary._morphology import shifted
from autoseg.losses.pixel.ce import cross_entropy
from autoseg.losses.registry import register_loss

_EPS0 = 1e-5  # the official code's first KL threshold, raised by 1.2x until few enough voxels remain
_GROWTH = 1.2


def boundary_distance(distance: torch.Tensor) -> torch.Tensor:
    """The distance to the nearest class boundary ``[B, *spatial]`` from per-class distance maps ``[B, C, *spatial]``.

    ``distance[:, c]`` is the unsigned distance to the boundary of class c (the ``distance`` map kind:
    inside, to the nearest voxel not in c; outside, to the nearest voxel of c; 0 for a class that is
    absent or fills the patch). Its minimum over the classes that have a boundary is the distance to
    the nearest voxel with another label (the ignore label counting as a label of its own, as the
    official code makes the ignored area "all boundary"); +inf where no class has one.
    """
    d = distance.float()
    return torch.where(d > 0, d, torch.full_like(d, float("inf"))).amin(1)


def _offsets(ndim: int) -> list[tuple[int, ...]]:
    # Face neighbours first, then edges, then corners: ties between equally close neighbours go to the
    # straightest direction, as in the official code's order (4 axis directions before the diagonals).
    return sorted((o for o in itertools.product((-1, 0, 1), repeat=ndim) if any(o)),
                  key=lambda o: (sum(map(abs, o)), o))


def predicted_boundary(logp: torch.Tensor, mask: torch.Tensor | None, max_n_ratio: float) -> torch.Tensor:
    """Voxels on predicted boundaries ``[B, *spatial]`` (bool), from the KL divergence of neighbouring distributions.

    KL(p_i || p_{i+1}) between each voxel and its next neighbour along every axis, summed over axes;
    a voxel is a boundary voxel when that sum exceeds a threshold that starts at 1e-5 and grows by
    1.2x until at most ``max_n_ratio`` of the case's voxels pass (the official loop, in closed form,
    per case); the result is dilated by one voxel (3x3 / 3x3x3). Pairs with an ignored voxel do
    not count.
    """
    with torch.no_grad():
        p = logp.exp()
        b, spatial = logp.shape[0], logp.shape[2:]
        valid = torch.ones((b, *spatial), dtype=logp.dtype, device=logp.device) if mask is None else mask.to(logp.dtype)
        kl = torch.zeros_like(valid)
        for axis in range(2, logp.ndim):
            nxt = shifted(logp, axis, 1)
            pair = valid * shifted(valid, axis - 1, 1)  # 0 at the last position along the axis
            kl = kl + (p * (logp - nxt)).sum(1) * pair
        flat = kl.flatten(1)
        n = flat.shape[1]
        n_max = int(math.floor(max_n_ratio * n))
        thresholds = []
        for row in flat:
            eps = _EPS0
            if int((row > eps).sum()) > n_max:
                v = float(row.topk(n_max + 1).values[-1]) if n_max + 1 <= n else float(row.max())
                eps = _EPS0 * _GROWTH ** max(0, math.ceil(math.log(v / _EPS0) / math.log(_GROWTH)))
                while int((row > eps).sum()) > n_max:  # guards the closed form against round-off
                    eps *= _GROWTH
            thresholds.append(eps)
        eps_t = torch.tensor(thresholds, dtype=flat.dtype, device=flat.device).reshape(b, *([1] * len(spatial)))
        edges = (kl > eps_t).to(logp.dtype).unsqueeze(1)
        pool = F.max_pool2d if len(spatial) == 2 else F.max_pool3d
        dilated = pool(edges, 3, 1, 1)[:, 0] > 0
        return dilated if mask is None else dilated & mask


def active_boundary_term(
    logits: torch.Tensor,
    distance: torch.Tensor,
    mask: torch.Tensor | None,
    max_clip_dist: float = 20.0,
    max_n_ratio: float = 0.01,
    label_smoothing: float = 0.2,
    detach_neighbours: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ABL term: per case, the summed weighted direction cross-entropy ``[B]`` and the number of voxels ``[B]``.

    ``distance`` is ``[B, *spatial]``: the distance to the nearest voxel of another reference label
    (:func:`boundary_distance` of the ``distance`` maps). See :func:`active_boundary_loss` for the definition.
    """
    logp = log_probabilities(logits)
    b, c = logp.shape[:2]
    spatial = logp.shape[2:]
    nd = len(spatial)
    selected = predicted_boundary(logp, mask, max_n_ratio) & torch.isfinite(distance)
    sums = logp.new_zeros(b)
    counts = logp.new_zeros(b)
    if not bool(selected.any()):
        return sums + 0 * logp.sum(), counts  # keeps the graph (a zero gradient) when nothing is selected
    # Everything is indexed in the volume padded by one voxel on every side, flattened: a neighbour's index
    # is then the centre's plus one constant per direction, and the padding (distance +inf, not valid)
    # stands for "outside the image", so no per-voxel bounds checks are needed.
    pad = (1, 1) * nd
    dist = distance.float() if mask is None else torch.where(mask, distance.float(), float("inf"))
    flat_dist = F.pad(dist, pad, value=float("inf")).flatten()
    valid = torch.ones_like(selected) if mask is None else mask
    flat_valid = F.pad(valid, pad, value=False).flatten()
    padded = [s + 2 for s in spatial]
    n_pad = int(np.prod(padded))
    strides = [int(np.prod(padded[i + 1:])) for i in range(nd)]
    steps = torch.tensor([sum(o * st for o, st in zip(off, strides)) for off in _offsets(nd)], device=logp.device)
    centre = F.pad(selected, pad, value=False).flatten().nonzero()[:, 0]  # [K]
    case = centre // n_pad
    d_centre = flat_dist.index_select(0, centre)
    logp_centre = logp.movedim(1, -1)[selected]  # [K, C], the same voxels in the same (row-major) order
    nb = centre[:, None] + steps[None]  # [K, O]
    nb_ok = flat_valid.take(nb)  # index_select/take: several times faster than advanced indexing on a CPU
    d_nb = torch.where(nb_ok, flat_dist.take(nb), float("inf"))
    best_d, best = d_nb.min(1)
    keep = best_d < d_centre  # a neighbour strictly closer to the reference boundary exists
    if not bool(keep.any()):
        return sums + 0 * logp.sum(), counts
    kept = keep.nonzero()[:, 0]
    case, best, nb, nb_ok, d_centre, logp_centre = (x.index_select(0, kept) for x in (case, best, nb, nb_ok, d_centre, logp_centre))
    # KL(p_j || p_i) = sum_c p_j log p_j - sum_c p_j log p_i: the neighbours' probabilities and negative
    # entropies are computed once over the volume and gathered, not recomputed per (voxel, direction).
    with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_neighbours):
        lp = logp.detach() if detach_neighbours else logp
        p = lp.exp()
        flat_p = F.pad(p.movedim(1, -1), (0, 0) + pad).reshape(-1, c)  # [B * n_pad, C]
        flat_negent = F.pad((p * lp).sum(1), pad).flatten()
    p_nb = flat_p.index_select(0, nb.flatten()).view(*nb.shape, c)
    kl = flat_negent.take(nb) - torch.bmm(p_nb, logp_centre[:, :, None])[..., 0]  # KL(p_neighbour || p_centre), [K, O]
    kl = kl.masked_fill(~nb_ok, -float("inf"))
    log_dir = torch.log_softmax(kl, dim=1)
    log_dir = torch.where(nb_ok, log_dir, torch.zeros_like(log_dir))
    n_dir = steps.shape[0]
    soft = torch.full_like(log_dir, label_smoothing / n_dir)
    soft = soft.scatter(1, best[:, None], 1 - label_smoothing)
    ce = -(soft * log_dir).sum(1)
    # Zero weight within one voxel of a voxel touching another label: the dilated band of a perfectly placed
    # boundary, as in the official code (whose distance, to the one-sided boundary, minus 1, is 0 there too).
    weight = (d_centre - 2).clamp(0, max_clip_dist) / max_clip_dist
    sums = sums.index_add(0, case, ce * weight)
    counts = counts.index_add(0, case, torch.ones_like(ce))
    return sums, counts


def active_boundary_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    distance: torch.Tensor | None = None,
    weight_ce: float = 1.0,
    weight_abl: float = 1.0,
    max_clip_dist: float = 20.0,
    max_n_ratio: float = 0.01,
    label_smoothing: float = 0.2,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Cross-entropy + active boundary loss, :math:`w_{ce} L_{CE} + w_{abl} L_{AB}`.

    Predicted boundary voxels :math:`\mathcal{B}` are found from the KL divergence between
    neighbouring class distributions (:func:`predicted_boundary`: at most ``max_n_ratio`` of the
    voxels, dilated by one). For each :math:`i \in \mathcal{B}`, the direction to its neighbour
    :math:`j` (8 in 2D, 26 in 3D) closest to the reference boundary is the target
    :math:`d_i^{gt} = \arg\min_j D(j)` of a classification whose scores are the divergences
    :math:`\mathrm{KL}(p_j \,\|\, p_i)` (the neighbours' distributions detached), so the gradient
    makes the prediction at i change most towards the true boundary:

    .. math::
        L_{AB} = \frac{1}{|\mathcal{B}'|} \sum_{i \in \mathcal{B}'}
                 \frac{\min(D(i) - 2,\ \theta)^+}{\theta}\;
                 \mathrm{CE}_{\epsilon}\Big(\operatorname{softmax}_j \mathrm{KL}(p_j \,\|\, p_i),\ d_i^{gt}\Big)

    D is the distance to the nearest voxel of another reference label (the ground-truth boundary
    distance map), :math:`\mathcal{B}'` the boundary voxels with a neighbour strictly closer to the
    reference boundary, θ = ``max_clip_dist``, CE_ε the cross-entropy with label smoothing ε
    (1 − ε on the target direction, ε/8 or ε/26 on each direction). The weight is 0 up to two
    voxels from a label change, so the band the dilation adds around a perfectly placed boundary
    costs nothing (the official code gets the same from its one-sided boundary distance minus 1).

    Wang et al., "Active boundary loss for semantic segmentation", AAAI 2022 (arXiv:2102.02696);
    defaults (θ = 20, 1 %, ε = 0.2, detached neighbours) from the official code
    (wangchi95/active-boundary-loss). The authors add it to cross-entropy (ABL alone does not train
    the classification; their best results add Lovász-softmax too: ``build_loss("active_boundary+lovasz")``).
    Differences from the official code, each documented in ``docs/losses.md``: 3D with 26
    neighbours; the threshold and the 1 % are per case (the official compares the whole batch's
    count with one image's 1 %); directions to ignored voxels or outside the image are left out of
    the softmax (the official pads by replication); D is symmetric (the official marks only one
    side of each label change, which shifts its map by one voxel on one side); a neighbour must be
    strictly closer than the voxel itself (the official breaks ties towards the neighbour).
    Inside nnU-Net, D comes from the per-class ``distance`` maps of the augmentation workers, in the
    units of the plan's spacing, so θ is then in millimetres; standalone the same maps are computed
    from the target (:mod:`autoseg.losses.maps`, on the CPU, once per call), in voxels.

    Args:
        logits: raw scores ``[B, C, *spatial]`` (2D or 3D).
        target: class indices ``[B, 1, *spatial]`` or ``[B, *spatial]``.
        distance: per-class distance maps ``[B, C, *spatial]`` (the ``distance`` map kind), or
            ``None`` to compute the boundary distance from ``target``.
        weight_ce, weight_abl: weights of the two terms (1 : 1).
        max_clip_dist: θ, the distance at which the weight saturates.
        max_n_ratio: largest fraction of a case's voxels taken as predicted boundary before dilation.
        label_smoothing: ε of the direction cross-entropy.
        ignore_index: label whose voxels add neither value nor gradient.
        reduction: ``"mean"`` (CE over counted voxels + ABL over boundary voxels of the batch),
            ``"sum"``, or ``"none"`` (per case).

    Example:
        >>> target = torch.zeros(1, 24, 24, dtype=torch.long)
        >>> target[0, 6:18, 6:18] = 1
        >>> onehot = torch.nn.functional.one_hot(target, 2).movedim(-1, 1).float()
        >>> good, shifted = 8 * onehot, 8 * onehot.roll(4, dims=-1)
        >>> float(active_boundary_loss(good, target)) < float(active_boundary_loss(shifted, target))
        True
    """
    check_reduction(reduction)
    target = check_logits_target(logits, target, ignore_index)
    mask = valid_mask(target, ignore_index)
    if distance is None:
        # Standalone: the maps the workers would have computed (edt on the CPU, once per call).
        from autoseg.losses.maps import compute_maps_torch

        distance = compute_maps_torch(target, logits.shape[1], ("distance",), ignore_index=ignore_index)["distance"]
        d = boundary_distance(distance)
    else:
        check_extras("active_boundary", ("distance",), {"distance": distance}, logits)
        d = boundary_distance(distance)
    ce = cross_entropy(logits, target, None, ignore_index, reduction)
    if weight_abl == 0:
        return weight_ce * ce
    sums, counts = active_boundary_term(logits, d, mask, max_clip_dist, max_n_ratio, label_smoothing)
    if reduction == "mean":
        abl = sums.sum() / counts.sum().clamp_min(1)
    elif reduction == "sum":
        abl = sums.sum()
    else:
        abl = sums / counts.clamp_min(1)
    return weight_ce * ce + weight_abl * abl


@register_loss("active_boundary", category="boundary", function=active_boundary_loss,
               citation="Wang et al. Active boundary loss for semantic segmentation. AAAI 2022 (arXiv:2102.02696)")
class ActiveBoundaryLoss(SegmentationLoss):
    """Cross-entropy + active boundary loss (KL-divergence directions of predicted boundaries towards the true ones)."""

    extra_inputs = ("distance",)

    def __init__(self, weight_ce: float = 1.0, weight_abl: float = 1.0, max_clip_dist: float = 20.0,
                 max_n_ratio: float = 0.01, label_smoothing: float = 0.2, *, ignore_index: int | None = None,
                 reduction: str = "mean"):
        super().__init__(ignore_index=ignore_index, reduction=reduction)
        self.weight_ce = check_positive("weight_ce", weight_ce, allow_zero=True)
        self.weight_abl = check_positive("weight_abl", weight_abl, allow_zero=True)
        self.max_clip_dist = check_positive("max_clip_dist", max_clip_dist)
        self.max_n_ratio = check_probability("max_n_ratio", max_n_ratio, low_open=True)
        self.label_smoothing = check_probability("label_smoothing", label_smoothing, high_open=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, distance: torch.Tensor | None = None) -> torch.Tensor:
        return active_boundary_loss(logits, target, distance, self.weight_ce, self.weight_abl, self.max_clip_dist,
                                    self.max_n_ratio, self.label_smoothing, self.ignore_index, self.reduction)
