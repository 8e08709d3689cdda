"""Grey-level morphology on ``[B, C, *spatial]`` tensors (2D and 3D) shared by the boundary losses.

Everything here is plain tensor arithmetic or max pooling, so it runs wherever the logits are (GPU
included), is differentiable where a loss needs it, and is exact under autocast (no convolution,
which autocast would move to half precision).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def shifted(x: torch.Tensor, axis: int, step: int, fill: float = 0.0) -> torch.Tensor:
    """``y[..., i, ...] = x[..., i + step, ...]`` along ``axis``; positions outside the tensor read ``fill``."""
    n = x.shape[axis]
    if abs(step) >= n:
        return torch.full_like(x, fill)
    pad = [0, 0] * (x.ndim - 1 - axis % x.ndim) + ([0, step] if step > 0 else [-step, 0])
    padded = F.pad(x, pad, value=fill)
    start = step if step > 0 else 0
    return padded.narrow(axis, start, n)


def cross_sum(x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Sum of each voxel and its face neighbours (the cross: 5 in 2D, 7 in 3D), outside read as ``fill``.

    This is the correlation with the cross-shaped structuring element of Karimi & Salcudean and of
    the Boundary DoU code (``[[0,1,0],[1,1,1],[0,1,0]]`` and its 3D analogue), zero padded.
    """
    out = x
    for axis in range(2, x.ndim):
        out = out + shifted(x, axis, 1, fill) + shifted(x, axis, -1, fill)
    return out


def inner_boundary(mask: torch.Tensor) -> torch.Tensor:
    """Voxels of a boolean ``mask`` with at least one face neighbour outside it; the image border counts as outside.

    The Boundary DoU definition: its code convolves the mask with the cross (zero padding) and keeps
    the mask voxels whose sum is below 5 (2D).
    """
    full = 2 * (mask.ndim - 2) + 1
    return mask & (cross_sum(mask.to(torch.int32)) < full)


def soft_erode(x: torch.Tensor) -> torch.Tensor:
    """Minimum over the cross (min pooling along each axis), the image outside ignored (clDice's soft erosion)."""
    if x.ndim == 4:
        kernels = [(3, 1), (1, 3)]
    elif x.ndim == 5:
        kernels = [(3, 1, 1), (1, 3, 1), (1, 1, 3)]
    else:
        raise ValueError(f"expected [B, C, H, W] or [B, C, D, H, W], got {tuple(x.shape)}")
    pool = F.max_pool2d if x.ndim == 4 else F.max_pool3d
    out = None
    for k in kernels:
        e = -pool(-x, k, 1, tuple(s // 2 for s in k))
        out = e if out is None else torch.minimum(out, e)
    return out


def soft_dilate(x: torch.Tensor) -> torch.Tensor:
    """Maximum over the 3x3 (3x3x3) square, the image outside ignored (clDice's soft dilation)."""
    pool = F.max_pool2d if x.ndim == 4 else F.max_pool3d
    return pool(x, 3, 1, 1)


def soft_open(x: torch.Tensor) -> torch.Tensor:
    return soft_dilate(soft_erode(x))


def soft_skeleton(x: torch.Tensor, iterations: int) -> torch.Tensor:
    """Soft skeleton of Shit et al. (clDice, Algorithm 1): the union of opening residues of successive erosions.

    ``skel = relu(x - open(x))``, then ``iterations`` times: ``x = erode(x)``,
    ``delta = relu(x - open(x))``, ``skel = skel + relu(delta - skel * delta)``. On a binary image
    this is Lantuejoul's morphological skeleton restricted to ``iterations + 1`` erosion levels.
    """
    skel = F.relu(x - soft_open(x))
    for _ in range(iterations):
        x = soft_erode(x)
        delta = F.relu(x - soft_open(x))
        skel = skel + F.relu(delta - skel * delta)
    return skel
