"""Grey-level morphology on ``[B, C, *spatial]`` tensors (2D and 3D) shared by the boundary losses.

Everything here is plain tensor arithmetic or max pooling, so it runs wherever the logits are (GPU
included), is differentiable where a loss needs it, and is exact under autocast (no convolution,
which autocast would move to half precision).

Two neighbourhoods: the face-connected cross (``cross_sum``, ``soft_erode``...: Karimi & Salcudean,
Boundary DoU, clDice) and the full 3^d cube (``erode_cube``, ``survival``, ``label_boundary``: the
head-based losses ``boundary_aware``, ``inverseform``, ``conditional_boundary``). With the cube,
"depth" is the chessboard distance to the nearest voxel of another label; ignored voxels are neutral
(they neither make a boundary nor erode a region), and the border of the patch is not a boundary (a
patch cuts objects, it does not end them).
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


class _NeighbourPick(torch.autograd.Function):
    """``y_i`` = the smallest (``largest``: greatest) of ``x_i`` and its neighbours ``x_{i+step}`` along
    ``axis`` for each ``(axis, step)`` of ``offsets``; neighbours outside the image are ignored.

    Forward keeps, per voxel, which candidate won (a uint8 code); backward routes each output
    gradient to that voxel. The same values and (away from ties) the same gradient as max pooling or
    ``torch.minimum`` under autograd, at a fraction of the CPU time: a few elementwise passes on
    the whole tensor instead of pooling with indices (clDice's soft skeleton was 0.4x a quick-plan
    network step). Ties go to the first candidate (the voxel itself, then ``offsets`` in order), a
    valid subgradient like any other. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, offsets: tuple[tuple[int, int], ...], largest: bool) -> torch.Tensor:
        out = x.clone()
        # uint8 arithmetic instead of torch.where/masked_fill, several times slower on the CPU;
        # code + better * (k - code) is exact modulo 256
        code = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
        for k, (axis, step) in enumerate(offsets, 1):
            n = x.shape[axis]
            if n < 2:
                continue
            o = out.narrow(axis, max(0, -step), n - 1)
            nb = x.narrow(axis, max(0, step), n - 1)
            c = code.narrow(axis, max(0, -step), n - 1)
            better = (nb > o if largest else nb < o).view(torch.uint8)
            # k exceeds every code set so far, so max(code, better * k) sets k exactly where better
            torch.maximum(c, better.mul_(k), out=c)
            (torch.maximum if largest else torch.minimum)(o, nb, out=o)
        ctx.save_for_backward(code)
        ctx.offsets = offsets
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (code,) = ctx.saved_tensors
        g = grad * (code == 0).view(torch.uint8).to(grad.dtype)
        for k, (axis, step) in enumerate(ctx.offsets, 1):
            n = grad.shape[axis]
            if n < 2:
                continue
            dst = max(0, -step)
            # bool -> uint8 (a view) -> float: much cheaper on the CPU than bool -> float or torch.where
            chosen = (code.narrow(axis, dst, n - 1) == k).view(torch.uint8).to(grad.dtype)
            g.narrow(axis, max(0, step), n - 1).addcmul_(grad.narrow(axis, dst, n - 1), chosen)
        return g, None, None


def _extreme_no_grad(x: torch.Tensor, offsets: tuple[tuple[int, int], ...], largest: bool) -> torch.Tensor:
    """:class:`_NeighbourPick`'s values without the bookkeeping for the gradient (a reference's skeleton)."""
    out = x.clone()
    for axis, step in offsets:
        n = x.shape[axis]
        if n < 2:
            continue
        o = out.narrow(axis, max(0, -step), n - 1)
        nb = x.narrow(axis, max(0, step), n - 1)
        o.copy_(torch.maximum(o, nb) if largest else torch.minimum(o, nb))
    return out


def _check_image(x: torch.Tensor) -> None:
    if x.ndim not in (4, 5):
        raise ValueError(f"expected [B, C, H, W] or [B, C, D, H, W], got {tuple(x.shape)}")


def soft_erode(x: torch.Tensor) -> torch.Tensor:
    """Minimum over the cross (each voxel and its face neighbours), the image outside ignored (clDice's soft erosion).

    The values of the reference's ``-max_pool(-x)`` along each axis followed by the minimum over the axes.
    """
    _check_image(x)
    offsets = tuple((axis, step) for axis in range(2, x.ndim) for step in (-1, 1))
    if not (torch.is_grad_enabled() and x.requires_grad):
        return _extreme_no_grad(x, offsets, False)
    return _NeighbourPick.apply(x, offsets, False)


def soft_dilate(x: torch.Tensor) -> torch.Tensor:
    """Maximum over the 3x3 (3x3x3) square, the image outside ignored (clDice's soft dilation).

    Taken one axis at a time (the maximum over a cube is separable): the same values as one 3^d
    max pooling with 3d instead of 3^d comparisons per voxel.
    """
    _check_image(x)
    track = torch.is_grad_enabled() and x.requires_grad
    for axis in range(2, x.ndim):
        offsets = ((axis, -1), (axis, 1))
        x = _NeighbourPick.apply(x, offsets, True) if track else _extreme_no_grad(x, offsets, True)
    return x


def soft_open(x: torch.Tensor) -> torch.Tensor:
    return soft_dilate(soft_erode(x))


def soft_skeleton(x: torch.Tensor, iterations: int) -> torch.Tensor:
    """Soft skeleton of Shit et al. (clDice, Algorithm 1): the union of opening residues of successive erosions.

    ``skel = relu(x - open(x))``, then ``iterations`` times: ``x = erode(x)``,
    ``delta = relu(x - open(x))``, ``skel = skel + relu(delta - skel * delta)``. On a binary image
    this is Lantuejoul's morphological skeleton restricted to ``iterations + 1`` erosion levels.
    """
    eroded = soft_erode(x)
    skel = F.relu(x - soft_dilate(eroded))
    for _ in range(iterations):
        # the erosion inside this level's opening is the next level's image: computed once
        x = eroded
        eroded = soft_erode(x)
        delta = F.relu(x - soft_dilate(eroded))
        skel = skel + F.relu(delta - skel * delta)
    return skel


# ---- the full 3^d cube: label boundaries, depth bins and their soft versions (head-based losses)


def erode_cube(x: torch.Tensor, times: int = 1) -> torch.Tensor:
    """Grey-value erosion (minimum over the 3^d cube) of ``[B, C, *spatial]``, ``times`` times.

    Out-of-patch voxels count as +inf, so they never erode (max pooling pads with -inf).
    """
    if not (torch.is_grad_enabled() and x.requires_grad):
        # a reference's boundary: the minimum over the cube is separable, and plain minima of shifted
        # views are several times faster on the CPU than pooling (which also builds indices)
        for _ in range(times):
            for axis in range(2, x.ndim):
                x = _extreme_no_grad(x, ((axis, -1), (axis, 1)), False)
        return x
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
        x = erode_cube(x)
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
