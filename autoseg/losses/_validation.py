"""Input checks shared by every loss: one place that says what arrived and what was expected."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

_REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def check_bool(name: str, value: Any) -> bool:
    """A flag: ``True``/``False`` (numpy booleans from a plans file too); a string ``"False"`` is a mistake."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


def check_ignore_index(ignore_index: Any) -> int | None:
    """``None`` or an integer label (numpy integers from a plans file included)."""
    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an integer label or None, got {ignore_index!r}")
    return int(ignore_index)


def check_extras(loss: str, declared: tuple[str, ...], extras: Mapping[str, Any], logits: torch.Tensor) -> None:
    """Check the extra inputs handed to a loss: declared by it, tensors, at the logits' batch and spatial size."""
    unknown = sorted(set(extras) - set(declared))
    if unknown:
        said = f"declares {list(declared)}" if declared else "takes no extra inputs"
        raise TypeError(f"{loss} {said}, got extra inputs {unknown}")
    for name, value in extras.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"extra input {name!r} of {loss} must be a torch.Tensor, got {type(value).__name__}")
        # Batch and spatial size must be the logits' (a map of another deep-supervision scale is the
        # usual mistake); the channel count is the loss's business (per class, as the interface says).
        if value.ndim != logits.ndim or value.shape[0] != logits.shape[0] or value.shape[2:] != logits.shape[2:]:
            raise ValueError(
                f"extra input {name!r} of {loss} must be [B, C, *spatial] at the logits' scale "
                f"{tuple(logits.shape)}, got {tuple(value.shape)}"
            )


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


def check_head_kernel(value: Any) -> int:
    """The size of an auxiliary head's first convolution (autoseg.trainers.heads): 1 (per voxel) or 3."""
    if isinstance(value, bool) or value not in (1, 3):
        raise ValueError(f"head_kernel must be 1 or 3, got {value!r}")
    return int(value)


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
