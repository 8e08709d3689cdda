"""InverseForm (Borse et al., CVPR 2021): CE + boundary BCE + the distance from identity of a frozen inverse-transformation network."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from autoseg.losses._functional import masked_voxel_mean, one_hot, probabilities, reduce, valid_mask
from autoseg.losses._validation import check_head_kernel, check_logits_target, check_positive, check_reduction
from autoseg.losses.base import SegmentationLoss
from autoseg.losses.boundary import _inverseform_net
from autoseg.losses.boundary._morphology import label_boundary, survival
from autoseg.losses.boundary.boundary_aware import check_head
from autoseg.losses.pixel.ce import CrossEntropyLoss, cross_entropy
from autoseg.losses.registry import register_loss

HEAD = "boundary"
_EPS = 1e-6
_NETWORK_DTYPES = {None: None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_NETS: dict[tuple[str, str, torch.dtype], nn.Module] = {}


def _frozen_net(path: str | None, device: torch.device, dtype: torch.dtype) -> nn.Module:
    # Kept outside the loss module's parameters: it is frozen, must not enter the optimiser, and
    # must not make the loss look learnable; one copy per device and precision.
    key = (str(Path(path).resolve()) if path else "", str(device), dtype)
    if key not in _NETS:
        _NETS[key] = _inverseform_net.load(path).to(device=device, dtype=dtype)
    return _NETS[key]


def boundary_tiles(boundary: torch.Tensor, tile: int = _inverseform_net.TILE) -> torch.Tensor:
    """``[B, *spatial]`` boundary maps -> ``[B, n, tile, tile]`` 2D tiles (zero-padded to whole tiles).

    3D volumes ``[B, X, Y, Z]`` are cut into slices along the last axis first (X-by-Y slices): the
    network and the paper are 2D.
    """
    b = boundary.unsqueeze(1) if boundary.ndim == 3 else boundary.permute(0, 3, 1, 2)
    h, w = b.shape[-2:]
    b = F.pad(b, (0, -w % tile, 0, -h % tile))
    n, s = b.shape[:2]
    t = b.unfold(2, tile, tile).unfold(3, tile, tile)  # [B, S, nh, nw, tile, tile]
    return t.reshape(n, -1, tile, tile)


def inverseform_distance(pred_boundary: torch.Tensor, gt_boundary: torch.Tensor, network: str | None = None,
                         dtype: torch.dtype | None = None) -> torch.Tensor:
    """Per case: mean over the tiles holding ground-truth boundary of ``|| f(pred, gt) - f(gt, gt) ||_2``, ``[B]``.

    ``f`` is the frozen inverse-transformation network; its output is the estimated affine transform
    minus the identity. A learned regressor does not return exactly the identity for two equal
    tiles (the shipped one is off by about a fifth of the typical transform it was trained on), so
    the distance is taken from its own estimate of the identity for that tile, ``f(gt, gt)``: a
    prediction that matches the ground truth scores exactly 0.

    ``dtype`` is the precision the frozen network runs in (default: the maps' own); the distance is
    returned in the maps' precision.
    """
    pred_t, gt_t = boundary_tiles(pred_boundary), boundary_tiles(gt_boundary)
    b, n = gt_t.shape[:2]
    weight = (gt_t.flatten(2).sum(-1) > 0).to(pred_t.dtype)  # [B, n]; from the target only
    keep = weight.flatten() > 0
    out = pred_t.new_zeros(b * n)
    if bool(keep.any()):
        run = dtype or pred_t.dtype
        net = _frozen_net(network, pred_t.device, run)
        moved = pred_t.reshape(b * n, 1, *pred_t.shape[2:])[keep].to(run)
        fixed = gt_t.reshape(b * n, 1, *gt_t.shape[2:])[keep].to(run)
        with torch.no_grad():
            identity = net(fixed, fixed).to(pred_t.dtype)
        est = net(moved, fixed).to(pred_t.dtype) - identity
        # sqrt with a floor: a finite gradient where the estimate is exactly the identity
        out = out.masked_scatter(keep, (est.pow(2).sum(1) + 1e-12).sqrt())
    out = out.reshape(b, n) * weight
    return out.sum(1) / weight.sum(1).clamp_min(1)


def inverseform_boundary_terms(
    logits: torch.Tensor,
    target: torch.Tensor,
    head_boundary: torch.Tensor | None = None,
    beta: float = 1.0,
    gamma: float = 1.0,
    network: str | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
    network_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""InverseForm's boundary terms, :math:`\beta\, \mathrm{BCE}_{bal}(\hat b, b) + \gamma\, L_{IF}`
    (:func:`inverseform_loss` without its cross-entropy; the arguments are the same)."""
    check_reduction(reduction)
    target = check_logits_target(logits, target, ignore_index)
    with torch.autocast(logits.device.type, enabled=False):
        mask = valid_mask(target, ignore_index)
        dtype = torch.promote_types(logits.dtype, torch.float32)
        valid = torch.ones(target.shape, dtype=dtype, device=logits.device) if mask is None else mask.to(dtype)
        with torch.no_grad():
            gt = label_boundary(one_hot(target, logits.shape[1], mask, dtype), mask)
            axes = tuple(range(1, gt.ndim))
            pos = gt.sum(axes, keepdim=True)
            total = valid.sum(axes, keepdim=True).clamp_min(1)
            balance = gt * (total - pos) / total + (1 - gt) * pos / total
        if head_boundary is not None:
            head = check_head("head_boundary", head_boundary, logits, 1).to(dtype)[:, 0]
            bce = F.binary_cross_entropy_with_logits(head, gt, reduction="none")
            pred = torch.sigmoid(head) * valid
        else:
            probs = probabilities(logits) * valid.unsqueeze(1)
            pred = valid - survival(probs, mask, 1)[0]
            p = pred.clamp(_EPS, 1 - _EPS)
            bce = -(gt * p.log() + (1 - gt) * (1 - p).log())
        bce_term = masked_voxel_mean(bce * balance, mask, reduction)
        if_term = reduce(inverseform_distance(pred, gt, network, network_dtype), reduction)
        return float(beta) * bce_term + float(gamma) * if_term


def inverseform_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    head_boundary: torch.Tensor | None = None,
    beta: float = 1.0,
    gamma: float = 1.0,
    network: str | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
    network_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""InverseForm loss: cross-entropy + boundary BCE + the inverse-transformation distance.

    .. math:: L = L_{CE} + \beta\, \mathrm{BCE}_{bal}(\hat b, b) + \gamma\, L_{IF}, \qquad
              L_{IF} = \operatorname{mean}_{tiles} \lVert f(\hat b, b) - f(b, b) \rVert_2

    b is the ground-truth boundary (a counted voxel with a counted 3^d neighbour of another label);
    BCE_bal the class-balanced BCE of Gated-SCNN that InverseForm trains its boundary head with
    (positives weighted by the negative fraction and vice versa, per case); f the frozen
    inverse-transformation network, fed 32x32 tiles of the predicted and ground-truth boundary maps
    (tiles without ground-truth boundary skipped), returning the affine transform between them minus
    the identity; the distance is taken from the network's own estimate for two equal tiles,
    f(b, b), rather than from the exact identity, so that a perfect prediction scores 0 (the
    paper's network is assumed to return the identity there). Borse et al.'s weights cannot be
    downloaded; autoseg ships its own network trained on synthetic boundary maps under random
    affine transforms (``autoseg train-inverseform``
    regenerates it; recipe and measured recovery error in ``docs/losses.md``). ``network`` points at
    other weights. 3D volumes are cut into 2D slices along their last axis (the paper is 2D).

    Where :math:`\hat b` comes from:

    * ``head_boundary`` ``[B, 1, *spatial]``, raw scores of the boundary head the autoseg trainer
      attaches to the last decoder stage (the paper's design): BCE with logits, and its sigmoid for L_IF.
    * nothing (standalone use): the reduced form, a soft boundary read off the softmax,
      :math:`\hat b = 1 - \sum_c \mathrm{erode}(p_c)`, exact for a one-hot prediction.

    Under deep supervision (:class:`InverseFormLoss` in the autoseg trainer) the cross-entropy is taken
    at every scale and the two boundary terms at full resolution only, as in the paper, which has one
    output and one boundary head.

    Defaults β = γ = 1 (see docs/losses.md on the paper's values). ``network_dtype`` is the precision
    the frozen network runs in (float32 by default; the autoseg trainer sets bfloat16 when it trains
    in bfloat16, where the network costs 2-4x less on a CPU); the loss's own arithmetic is float32.

    Example:
        >>> target = torch.zeros(1, 16, 16, dtype=torch.long); target[:, 4:12, 4:12] = 1
        >>> perfect = 20 * torch.nn.functional.one_hot(target, 2).movedim(-1, 1).float()
        >>> float(inverseform_loss(perfect, target)) < float(inverseform_loss(-perfect, target))
        True
    """
    ce = cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction)
    return ce + inverseform_boundary_terms(logits, target, head_boundary, beta, gamma, network, ignore_index,
                                           reduction, network_dtype)


class InverseFormBoundaryTerms(SegmentationLoss):
    """InverseForm's two boundary terms, β·BCE_bal + γ·L_IF, with the boundary head they read.

    A part of :class:`InverseFormLoss` (not registered on its own). ``full_resolution_only``: under deep
    supervision it is evaluated on the full-resolution output only, with the whole deep-supervision
    weight (autoseg.trainers.deep_supervision), where the boundary head's output is.
    """

    #: the output of the auxiliary head the trainer attaches (autoseg.trainers.heads), not a worker map
    extra_inputs: ClassVar[tuple[str, ...]] = ("head_" + HEAD,)
    full_resolution_only: ClassVar[bool] = True

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, network: str | None = None, head_kernel: int = 3, *,
                 network_dtype: str | None = None, ignore_index: int | None = None, reduction: str = "mean"):
        super().__init__(ignore_index=ignore_index, reduction=reduction)
        self.beta = check_positive("beta", beta, allow_zero=True)
        self.gamma = check_positive("gamma", gamma, allow_zero=True)
        self.network = None if network is None else str(network)
        if self.network is not None and not Path(self.network).is_file():
            raise ValueError(f"network must be a file of InverseForm network weights, got {self.network!r} (not found)")
        if network_dtype not in _NETWORK_DTYPES:
            raise ValueError(f"network_dtype must be one of {sorted(k for k in _NETWORK_DTYPES if k)} or None, "
                             f"got {network_dtype!r}")
        #: precision of the frozen network (None: float32); the trainer sets "bfloat16" when it trains in it
        self.network_dtype = network_dtype
        self.head_kernel = check_head_kernel(head_kernel)
        #: the trainer attaches a 1-channel boundary head on the last decoder stage (autoseg.trainers.heads):
        #: a 3x3 (3^d) convolution block by default, two per-voxel convolutions with head_kernel=1
        self.auxiliary_heads = {HEAD: 1}
        self.auxiliary_head_kernels = {HEAD: self.head_kernel}

    def forward(self, logits: torch.Tensor, target: torch.Tensor, **extras: Any) -> torch.Tensor:
        _check_extras(extras)
        return inverseform_boundary_terms(logits, target, extras.get("head_" + HEAD), self.beta, self.gamma,
                                          self.network, self.ignore_index, self.reduction,
                                          _NETWORK_DTYPES[self.network_dtype])


def _check_extras(extras: dict[str, Any]) -> None:
    unknown = set(extras) - {"head_" + HEAD}
    if unknown:
        raise TypeError(f"inverseform got unexpected extras {sorted(unknown)}; it accepts 'head_{HEAD}'")


@register_loss("inverseform", category="boundary", function=inverseform_loss,
               citation="Borse, Wang, Zhang, Porikli. InverseForm: a loss function for structured boundary-aware "
                        "segmentation. CVPR 2021 (arXiv:2104.02745)")
class InverseFormLoss(SegmentationLoss):
    """InverseForm: CE + balanced boundary BCE + distance from identity of a frozen inverse-transformation network.

    Built of two parts, ``components`` with ``weights`` 1 and 1, as a compound is: the cross-entropy, taken at
    every deep-supervision scale, and :class:`InverseFormBoundaryTerms`, taken at full resolution only.
    """

    extra_inputs: ClassVar[tuple[str, ...]] = ("head_" + HEAD,)

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, network: str | None = None, head_kernel: int = 3, *,
                 network_dtype: str | None = None, ignore_index: int | None = None, reduction: str = "mean"):
        super().__init__(ignore_index=ignore_index, reduction=reduction)
        terms = InverseFormBoundaryTerms(beta, gamma, network, head_kernel, network_dtype=network_dtype,
                                         ignore_index=ignore_index, reduction=reduction)
        self.components = nn.ModuleList([CrossEntropyLoss(ignore_index=ignore_index, reduction=reduction), terms])
        self.weights = [1.0, 1.0]
        self.auxiliary_heads = dict(terms.auxiliary_heads)
        self.auxiliary_head_kernels = dict(terms.auxiliary_head_kernels)

    @property
    def _terms(self) -> InverseFormBoundaryTerms:
        return self.components[1]

    beta = property(lambda self: self._terms.beta)
    gamma = property(lambda self: self._terms.gamma)
    network = property(lambda self: self._terms.network)
    head_kernel = property(lambda self: self._terms.head_kernel)

    @property
    def network_dtype(self) -> str | None:
        return self._terms.network_dtype

    @network_dtype.setter
    def network_dtype(self, value: str | None) -> None:
        self._terms.network_dtype = value

    def forward(self, logits: torch.Tensor, target: torch.Tensor, **extras: Any) -> torch.Tensor:
        _check_extras(extras)
        ce, terms = self.components
        return ce(logits, target) + terms(logits, target, **extras)
