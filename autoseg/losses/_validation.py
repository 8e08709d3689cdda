"""Input checks shared by every loss: one place that says what arrived and what was expected."""

from __future__ import annotations

import torch

_REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def check_probability(name: str, value: float, *, low_open: bool = False, high_open: bool = False) -> float:
    """Check that a hyper-parameter lies in [0, 1] (ends optionally open)."""
    value = float(value)
    lo_ok = value > 0 if low_open else value >= 0
    hi_ok = value < 1 if high_open else value <= 1
    if not (lo_ok and hi_ok) or value != value:
        lo = "(0" if low_open else "[0"
        hi = "1)" if high_open else "1]"
        raise ValueError(f"{name} must lie in {lo}, {hi}, got {value}")
    return value


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    value = float(value)
    if value != value or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def check_logits_target(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    """Validate a (logits, target) pair and return the target as ``[B, *spatial]`` int64.

    ``logits`` must be ``[B, C, *spatial]`` with 2 or 3 spatial dimensions; ``target`` holds class
    indices as ``[B, 1, *spatial]`` or ``[B, *spatial]``. Every label must be a valid class index
    or ``ignore_index``.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if logits.ndim not in (4, 5):
        raise ValueError(
            f"logits must have shape [B, C, H, W] or [B, C, D, H, W], got {tuple(logits.shape)}"
        )
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating point tensor of raw scores, got {logits.dtype}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"target must be an integer tensor of class indices, got {target.dtype}; "
            "cast a label map with .long()"
        )
    spatial = logits.shape[2:]
    if target.ndim == logits.ndim and target.shape[1] == 1:
        target = target[:, 0]
    if target.shape[0] != logits.shape[0] or target.shape[1:] != spatial:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}: "
            f"expected [B, 1, *spatial] or [B, *spatial] with B={logits.shape[0]}, spatial={tuple(spatial)}"
        )
    if logits.shape[1] < 2:
        raise ValueError(f"logits need at least 2 channels (classes, softmax), got {logits.shape[1]}")
    if not bool(torch.isfinite(logits).all()):
        n_bad = int((~torch.isfinite(logits)).sum())
        raise ValueError(f"logits contain {n_bad} NaN or infinite values")
    target = target.long()
    num_classes = logits.shape[1]
    bad = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        bad &= target != ignore_index
    if bool(bad.any()):
        values = torch.unique(target[bad])[:10].tolist()
        raise ValueError(
            f"target holds labels {values} outside [0, {num_classes - 1}]"
            + (f" and not equal to ignore_index={ignore_index}" if ignore_index is not None else
               "; pass ignore_index if one of them marks voxels to ignore")
        )
    return target
