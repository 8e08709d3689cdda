"""Conditional boundary loss (Wu et al., IEEE TIP 2023): CE + A2C + A2P&N contrast on sampled boundary voxels."""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

import torch

from autoseg.losses._functional import gathered_log_probabilities, masked_voxel_mean, one_hot, probabilities, reduce, valid_mask
from autoseg.losses._validation import check_head_kernel, check_logits_target, check_positive, check_reduction
from autoseg.losses.base import SegmentationLoss
from autoseg.losses.boundary._morphology import label_boundary
from autoseg.losses.boundary.boundary_aware import check_head
from autoseg.losses.registry import register_loss

HEAD = "embedding"


def _offsets(dims: int, radius: int) -> torch.Tensor:
    r = range(-radius, radius + 1)
    return torch.tensor([o for o in itertools.product(r, repeat=dims) if any(o)], dtype=torch.long)


def _argmax_channels(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(1)`` (the first maximum on ties) by C elementwise passes: several times faster on
    the CPU than the reduction over the channel axis, which is not the contiguous one."""
    best, index = logits[:, 0], torch.zeros_like(logits[:, 0], dtype=torch.long)
    for c in range(1, logits.shape[1]):
        better = logits[:, c] > best
        best = torch.maximum(best, logits[:, c])
        index = index.masked_fill(better, c)
    return index


def _unit(v: torch.Tensor) -> torch.Tensor:
    """``v / max(|v|, 1e-12)`` along the last axis (F.normalize's values, with plain elementwise ops)."""
    return v * (v * v).sum(-1, keepdim=True).clamp_min(1e-24).rsqrt()


def _sample_anchors(boundary: torch.Tensor, max_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The anchors of every case (case index, flat voxel index), at most ``max_samples`` per case.

    One ``nonzero`` over the batch (one device sync, not one per case); a case with more boundary voxels
    keeps a fixed-seed random subset: the same voxels for the same target, whatever the rest of the batch.
    """
    batch = boundary.shape[0]
    found = boundary.reshape(batch, -1).nonzero()  # [A, 2], sorted by case, then voxel
    case, voxel = found[:, 0], found[:, 1]
    counts = torch.bincount(case, minlength=batch).tolist()
    if max(counts, default=0) <= max_samples:
        return case, voxel
    keep, start = [], 0
    for count in counts:
        rows = torch.arange(start, start + count)
        if count > max_samples:
            g = torch.Generator().manual_seed(seed)
            rows = rows[torch.randperm(count, generator=g)[:max_samples]]
        keep.append(rows)
        start += count
    rows = torch.cat(keep).to(found.device)
    return case[rows], voxel[rows]


def _per_case_mean(values: torch.Tensor, counted: torch.Tensor, case: torch.Tensor, batch: int) -> torch.Tensor:
    """Mean of ``values`` over the ``counted`` anchors of each case (0 for a case with none)."""
    total = values.new_zeros(batch).index_add(0, case, values * counted)
    number = values.new_zeros(batch).index_add(0, case, counted.to(values.dtype))
    return total / number.clamp_min(1)


def _batch_terms(z: torch.Tensor, label: torch.Tensor, correct: torch.Tensor, valid: torch.Tensor,
                 boundary: torch.Tensor, radius: int, temperature: float, max_samples: int,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A2C and A2P&N of every case, ``[B]`` each; ``z`` ``[B, D, *spatial]`` embeddings (made unit length
    here), the rest ``[B, *spatial]``. All cases' anchors are handled together: a loop over the cases cost
    a device sync and some thirty small kernels per case, several times the network's step on a GPU."""
    batch, spatial = label.shape[0], label.shape[1:]
    voxels = label[0].numel()
    case, anchors = _sample_anchors(boundary, max_samples, seed)
    coords = torch.stack(torch.unravel_index(anchors, spatial), 1)  # [A, dims]
    offs = _offsets(len(spatial), radius).to(coords.device)  # [K, dims]
    nb = coords[:, None, :] + offs[None]  # [A, K, dims]
    size = torch.tensor(spatial, device=coords.device)
    inside = ((nb >= 0) & (nb < size)).all(-1)
    nb = torch.where(inside[..., None], nb, torch.zeros_like(nb))
    flat = torch.zeros_like(nb[..., 0])
    for d in range(len(spatial)):
        flat = flat * spatial[d] + nb[..., d]
    start = case * voxels  # where each anchor's case begins in the flattened batch
    lab, cor, val = (x.flatten()[flat + start[:, None]] for x in (label, correct, valid))
    usable = inside & val & cor  # only correctly classified, counted neighbours take part (the condition)
    same = usable & (lab == label.flatten()[anchors + start][:, None])
    diff = usable & ~same
    # one row per voxel: gathering rows is several times faster than gathering columns of [D, N]
    zt = z.flatten(2).transpose(1, 2)  # [B, N, D], a view
    # unit length here, on the A * (K + 1) gathered vectors only: normalising the whole full-resolution
    # embedding (and its backward) cost more than the rest of the loss
    za = _unit(zt[case, anchors])  # [A, D]
    zn = _unit(zt[case[:, None], flat])  # [A, K, D]
    n_same = same.sum(1)
    has_pos = n_same > 0
    # A2C: each boundary voxel pulled to the mean embedding of its correct same-class neighbours
    centre = (zn * same[..., None]).sum(1) / n_same.clamp_min(1)[:, None]
    a2c = _per_case_mean((za - centre).pow(2).sum(1), has_pos, case, batch)
    # A2P&N: InfoNCE with the correct same-class neighbours as positives, the other-class ones as negatives
    sim = (zn * za[:, None]).sum(-1) / temperature  # [A, K]
    both = has_pos & (diff.sum(1) > 0)
    neg_inf = torch.finfo(sim.dtype).min
    log_pos = torch.logsumexp(torch.where(same, sim, torch.full_like(sim, neg_inf)), 1)
    log_all = torch.logsumexp(torch.where(usable, sim, torch.full_like(sim, neg_inf)), 1)
    a2pn = _per_case_mean(torch.where(both, log_all - log_pos, torch.zeros_like(log_all)), both, case, batch)
    if anchors.numel() == 0:  # keep z in the graph (its gradient is zero), as a case with anchors would
        a2c = a2c + z.sum() * 0
    return a2c, a2pn


def conditional_boundary_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    head_embedding: torch.Tensor | None = None,
    weight_a2c: float = 1.0,
    weight_a2pn: float = 1.0,
    temperature: float = 0.1,
    radius: int = 1,
    max_samples: int = 2048,
    seed: int = 0,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Conditional boundary loss: cross-entropy + A2C + A2P&N on boundary voxels, conditioned on correct neighbours.

    .. math::
        L = L_{CE} + w_1 \frac{1}{|A|}\sum_{i \in A} \lVert z_i - c_i \rVert^2
            + w_2 \frac{1}{|A'|}\sum_{i \in A'} -\log
              \frac{\sum_{j \in P_i} e^{z_i \cdot z_j / \tau}}{\sum_{j \in P_i \cup N_i} e^{z_i \cdot z_j / \tau}}

    For each ground-truth boundary voxel i (a counted voxel with a counted 3^d neighbour of another
    label), over its neighbours within ``radius`` (3^d - 1 of them at radius 1): P_i the correctly
    classified neighbours of i's class, N_i the correctly classified neighbours of other classes (the
    conditional, correctness-aware sampling: wrongly classified neighbours take no part),
    c_i the mean embedding of P_i (i's local class centre). z are unit-length embeddings. A holds the
    anchors with a positive, A' those with a positive and a negative. At most ``max_samples`` boundary
    voxels per case take part (a fixed-seed random subset), which bounds memory at
    ``max_samples * 3^d`` embeddings.

    Where z comes from:

    * ``head_embedding`` ``[B, D, *spatial]``: the projection head the autoseg trainer attaches to the
      last decoder stage (Wu et al. apply the loss to decoder features through a projection), L2-normalised.
    * nothing (standalone use, lower deep-supervision scales): the reduced form, z = the softmax
      probability vector, L2-normalised (an embedding of dimension C).

    Defaults: w_1 = w_2 = 1, τ = 0.1, radius 1 (see docs/losses.md on the paper's values).

    Example:
        >>> target = torch.zeros(1, 8, 8, dtype=torch.long); target[:, :, 4:] = 1
        >>> good = 20 * torch.nn.functional.one_hot(target, 2).movedim(-1, 1).float()
        >>> float(conditional_boundary_loss(good, target)) < 1e-3
        True
    """
    check_reduction(reduction)
    target = check_logits_target(logits, target, ignore_index)
    if int(radius) != radius or radius < 1:
        raise ValueError(f"radius must be an integer >= 1, got {radius}")
    if int(max_samples) != max_samples or max_samples < 1:
        raise ValueError(f"max_samples must be an integer >= 1, got {max_samples}")
    check_positive("temperature", temperature)
    with torch.autocast(logits.device.type, enabled=False):
        mask = valid_mask(target, ignore_index)
        logp, _ = gathered_log_probabilities(logits, target, mask)
        dtype = logp.dtype
        ce = masked_voxel_mean(-logp, mask, reduction)
        valid = torch.ones_like(target, dtype=torch.bool) if mask is None else mask
        with torch.no_grad():
            boundary = label_boundary(one_hot(target, logits.shape[1], mask, dtype), mask) > 0
            correct = (_argmax_channels(logits) == target) & valid
        if head_embedding is not None:
            z = check_head("head_embedding", head_embedding, logits, None).to(dtype)
        else:
            z = probabilities(logits)
        a2c, a2pn = _batch_terms(z, target, correct, valid, boundary, int(radius), float(temperature),
                                 int(max_samples), int(seed))
        extra = float(weight_a2c) * a2c + float(weight_a2pn) * a2pn
        return ce + reduce(extra, reduction)


@register_loss("conditional_boundary", category="boundary", function=conditional_boundary_loss,
               citation="Wu, Guo, Li, Yu, Gao, Sang. Conditional boundary loss for semantic segmentation. "
                        "IEEE TIP 32:3717-3731, 2023")
class ConditionalBoundaryLoss(SegmentationLoss):
    """Conditional boundary loss: CE + A2C (pull to the local class centre) + A2P&N contrast on boundary voxels."""

    #: the output of the auxiliary head the trainer attaches (autoseg.trainers.heads), not a worker map
    extra_inputs: ClassVar[tuple[str, ...]] = ("head_" + HEAD,)

    def __init__(self, weight_a2c: float = 1.0, weight_a2pn: float = 1.0, temperature: float = 0.1,
                 radius: int = 1, max_samples: int = 2048, embedding_dim: int = 16, seed: int = 0,
                 head_kernel: int = 1, *, ignore_index: int | None = None, reduction: str = "mean"):
        super().__init__(ignore_index=ignore_index, reduction=reduction)
        self.weight_a2c = check_positive("weight_a2c", weight_a2c, allow_zero=True)
        self.weight_a2pn = check_positive("weight_a2pn", weight_a2pn, allow_zero=True)
        self.temperature = check_positive("temperature", temperature)
        for name, value in (("radius", radius), ("max_samples", max_samples), ("embedding_dim", embedding_dim)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value}")
        self.radius, self.max_samples, self.embedding_dim = int(radius), int(max_samples), int(embedding_dim)
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed}")
        self.seed = int(seed)
        self.head_kernel = check_head_kernel(head_kernel)
        #: the trainer attaches a projection head of embedding_dim channels on the last decoder stage;
        #: per voxel (1x1 convolutions) by default, the usual projection head of contrastive losses
        self.auxiliary_heads = {HEAD: self.embedding_dim}
        self.auxiliary_head_kernels = {HEAD: self.head_kernel}

    def forward(self, logits: torch.Tensor, target: torch.Tensor, **extras: Any) -> torch.Tensor:
        unknown = set(extras) - {"head_" + HEAD}
        if unknown:
            raise TypeError(f"conditional_boundary got unexpected extras {sorted(unknown)}; it accepts 'head_{HEAD}'")
        return conditional_boundary_loss(logits, target, extras.get("head_" + HEAD), self.weight_a2c, self.weight_a2pn,
                                         self.temperature, self.radius, self.max_samples, self.seed,
                                         self.ignore_index, self.reduction)
