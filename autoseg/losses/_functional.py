"""Shared pieces of the losses: probabilities, one-hot targets, ignore masks, soft TP/FP/FN, reduction."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the class axis, computed in float32 (or float64) whatever the input precision."""
    return torch.softmax(_upcast(logits), dim=1)


def log_probabilities(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(_upcast(logits), dim=1)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def valid_mask(target: torch.Tensor, ignore_index: int | None) -> torch.Tensor | None:
    """Boolean ``[B, *spatial]`` mask of voxels that count, or ``None`` when nothing is ignored."""
    if ignore_index is None:
        return None
    return target != ignore_index


def one_hot(target: torch.Tensor, num_classes: int, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """One-hot ``[B, C, *spatial]`` of an index map; ignored voxels become all-zero rows."""
    safe = target if mask is None else torch.where(mask, target, torch.zeros_like(target))
    onehot = F.one_hot(safe, num_classes).movedim(-1, 1).to(dtype)
    if mask is not None:
        onehot = onehot * mask.unsqueeze(1).to(dtype)
    return onehot


def masked_probabilities(probs: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the probabilities at ignored voxels so they add to no sum (and get no gradient)."""
    if mask is None:
        return probs
    return probs * mask.unsqueeze(1).to(probs.dtype)


def soft_counts(
    probs: torch.Tensor, onehot: torch.Tensor, batch: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft true positives, false positives and false negatives per class.

    Returns three tensors of shape ``[B, C]`` (``batch=False``) or ``[1, C]`` (``batch=True``, the
    batch summed before any ratio is taken, as nnU-Net's batch Dice). Ignored voxels must already be
    zero in both inputs.
    """
    axes = tuple(range(2, probs.ndim))
    tp = (probs * onehot).sum(axes)
    sum_p = probs.sum(axes)
    sum_t = onehot.sum(axes)
    fp = sum_p - tp
    fn = sum_t - tp
    if batch:
        tp, fp, fn = (x.sum(0, keepdim=True) for x in (tp, fp, fn))
    return tp, fp, fn


def select_classes(per_class: torch.Tensor, include_background: bool) -> torch.Tensor:
    """Drop class 0 (the last axis) unless the background is to be included."""
    return per_class if include_background else per_class[..., 1:]


def reduce(per_case: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply ``reduction`` to a ``[B]`` (or ``[1]`` for batch losses) vector of per-case values."""
    if reduction == "mean":
        return per_case.mean()
    if reduction == "sum":
        return per_case.sum()
    return per_case


def masked_voxel_mean(per_voxel: torch.Tensor, mask: torch.Tensor | None, reduction: str,
                      weight: torch.Tensor | None = None) -> torch.Tensor:
    """Average a ``[B, *spatial]`` per-voxel loss over the counted voxels.

    ``mean`` averages over all counted voxels of the batch; ``sum`` adds them; ``none`` gives one
    value per case (its mean over its counted voxels). ``weight`` (same shape) turns the mean into a
    weighted mean, normalised by the sum of weights as ``torch.nn.functional.cross_entropy`` does.
    With no counted voxel the mean is 0, not NaN.
    """
    w = torch.ones_like(per_voxel) if weight is None else weight
    if mask is not None:
        w = w * mask.to(per_voxel.dtype)
    weighted = per_voxel * w
    if reduction == "sum":
        return weighted.sum()
    if reduction == "mean":
        return weighted.sum() / w.sum().clamp_min(torch.finfo(per_voxel.dtype).tiny)
    axes = tuple(range(1, per_voxel.ndim))
    return weighted.sum(axes) / w.sum(axes).clamp_min(torch.finfo(per_voxel.dtype).tiny)


def soft_region_counts(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None, batch: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate the inputs and return the soft ``(TP, FP, FN)`` per class, ignored voxels left out.

    Each is ``[B, C]`` (``[1, C]`` with ``batch``); see :func:`soft_counts`.
    """
    from autoseg.losses._validation import check_logits_target

    target = check_logits_target(logits, target, ignore_index)
    mask = valid_mask(target, ignore_index)
    probs = masked_probabilities(probabilities(logits), mask)
    onehot = one_hot(target, logits.shape[1], mask, probs.dtype)
    return soft_counts(probs, onehot, batch)


def safe_pow(x: torch.Tensor, exponent: float, eps: float = 1e-6) -> torch.Tensor:
    """``x ** exponent`` for ``x >= 0`` whose gradient stays finite at 0 when ``exponent < 1``.

    Below ``eps`` the power is replaced by the straight line from 0 to ``eps ** exponent`` (continuous,
    0 at 0), so a perfect prediction still scores exactly 0 but back-propagation never meets the
    infinite slope of ``x ** 0.3`` at 0. For ``exponent >= 1`` this is the plain power.

    The price is the value below ``eps``: the largest change, at ``x = a ** (1 / (1 - a)) * eps``, is
    ``(1 - a) a^(a / (1 - a)) eps^a`` for exponent ``a``: 6.6e-3 at a = 0.3, 2.5e-4 at 0.5, 3.3e-6 at
    0.75 (tested in tests/losses/test_losses_values.py). Multiplied by ``-log p < 1e-6`` in the focal
    loss it is below 1e-8 there; in a power of a whole term (exp_log, focal Tversky, unified focal) it
    is not.
    """
    x = x.clamp_min(0)
    if exponent >= 1:
        return x.pow(exponent)
    return torch.where(x > eps, x.clamp_min(eps).pow(exponent), x * eps ** (exponent - 1))


def gathered_log_probabilities(logits: torch.Tensor, target: torch.Tensor,
                               mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``log p`` of the reference class per voxel ``[B, *spatial]`` and the target with ignored labels set to 0."""
    logp = log_probabilities(logits)
    safe = target if mask is None else torch.where(mask, target, torch.zeros_like(target))
    return logp.gather(1, safe.unsqueeze(1)).squeeze(1), safe
