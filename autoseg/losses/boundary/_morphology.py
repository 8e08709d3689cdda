"""Tensor morphology shared by the head-based boundary losses: label boundaries, depth bins, soft erosions.

Everything here is pure PyTorch (runs where the logits are, 2D and 3D) and uses the full 3^d cube
(8 neighbours in 2D, 26 in 3D), so "depth" is the chessboard distance to the nearest voxel of another
label. Ignored voxels are neutral: they neither make a boundary nor erode a region, and the border of
the patch is not a boundary (a patch cuts objects, it does not end them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def erode(x: torch.Tensor, times: int = 1) -> torch.Tensor:
    """Grey-value erosion (minimum over the 3^d cube) of ``[B, C, *spatial]``, ``times`` times.

    Out-of-patch voxels count as +inf, so they never erode (max pooling pads with -inf).
    """
    pool = F.max_pool3d if x.ndim == 5 else F.max_pool2d
    for _ in range(times):
        x = -pool(-x, kernel_size=3, stride=1, padding=1)
    return x


def _neutral(onehot: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # An ignored voxel counts as every class at once, so no class is eroded by it.
    if mask is None:
        return onehot
    return torch.where(mask.unsqueeze(1), onehot, torch.ones_like(onehot))


def survival(probs: torch.Tensor, mask: torch.Tensor | None, depth: int) -> list[torch.Tensor]:
    """``[e_1, ..., e_depth]``: e_k = sum_c erode^k(p_c), the (soft) indicator that a voxel lies at least
    k erosions deep inside its class, ``[B, *spatial]`` each, zero at ignored voxels.

    For a one-hot ``probs`` this is exact: e_k(n) = 1 iff every voxel within chessboard distance k of n
    has n's label (or is ignored). For softmax probabilities it is the soft version used as the
    reduced form of the losses below; e_k is non-increasing in k and lies in [0, 1].
    """
    x = _neutral(probs, mask)
    out = []
    for _ in range(depth):
        x = erode(x)
        e = x.sum(1)
        if mask is not None:
            e = e * mask.to(e.dtype)
        out.append(e)
    return out


def bins_from_survival(survive: list[torch.Tensor], valid: torch.Tensor) -> torch.Tensor:
    """K = len(survive) + 1 bin maps ``[B, K, *spatial]``: bin 0 = 1 - e_1 (the boundary), bin k = e_k - e_{k+1},
    the last bin = e_{K-1} (at least K-1 erosions deep). ``valid`` (0/1 floats) zeroes ignored voxels."""
    levels = [valid] + survive + [torch.zeros_like(valid)]
    return torch.stack([levels[k] - levels[k + 1] for k in range(len(levels) - 1)], 1)


def label_boundary(onehot: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Ground-truth boundary ``[B, *spatial]`` (0/1): a counted voxel with a counted 3^d neighbour of another label."""
    valid = torch.ones_like(onehot[:, 0]) if mask is None else mask.to(onehot.dtype)
    return valid - survival(onehot, mask, 1)[0]
