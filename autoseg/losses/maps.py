"""Ground-truth maps that boundary and topology losses need: signed and unsigned distances, boundaries, skeletons.

Inside nnU-Net these maps are computed by :class:`autoseg.trainers.maps_transform.LossMapsTransform`
in the augmentation worker processes, AFTER spatial augmentation and for every deep-supervision
scale, with the plan's voxel spacing; losses receive them as keyword tensors named after the map
kind. Standalone, a loss computes them from its target with :func:`compute_maps_torch` (the same
numbers, on the CPU, once per call: slower, but nothing else is needed).

Every kind is per class: for a label map ``[*spatial]`` and ``C`` classes a kind is a float32 array
``[C, *spatial]``. Distances are Euclidean, exact (the ``edt`` package; scipy's
``distance_transform_edt`` is the test oracle) and in the units of ``spacing`` (voxels when it is
``None``). For class ``c``, ``inside`` is the set of voxels labelled ``c``:

``signed_distance`` (Kervadec et al.)
    outside: distance to the nearest voxel of ``c`` (> 0); inside: minus the distance to the nearest
    voxel not in ``c`` (< 0). Never 0 where defined (the distance is measured between voxel
    centres, so it is at least the smallest spacing). Kervadec's reference code shifts the inside by
    +1 so that inner boundary voxels are 0; autoseg keeps the map strictly negative inside, which
    makes "negative inside" exact for any spacing.
``distance``
    the unsigned distance to the class boundary from both sides, ``|signed_distance|`` (Karimi &
    Salcudean's ``edt(fg) + edt(bg)``).
``boundary``
    1 at inner boundary voxels: voxels of ``c`` with a face neighbour (4 in 2D, 6 in 3D) inside the
    patch that is not ``c``; 0 elsewhere. The patch border is not a boundary (a patch is a crop).
``skeleton``
    ``skimage.morphology.skeletonize`` of the class mask (Zhang's method in 2D, Lee's in 3D), on
    the voxel grid (skeletons are topological; spacing is not used).
``tubed_skeleton``
    the skeleton dilated twice with the face-connected cross and cut back to the class mask, the
    "tubed" skeleton of Kirchhoff et al. (Skeleton Recall, ECCV 2024).
``skeleton_level``
    the reference skeleton of clDice (Shit et al.) for any number of iterations at once: 1 + k at
    the voxels that enter the morphological skeleton at erosion level k (the first k where the voxel
    is in ``x_k`` minus the opening of ``x_k``, with ``x_0`` the class mask, ``x_{k+1}`` its erosion by
    the face-connected cross and the opening an erosion by the cross followed by a dilation by the
    3^d cube, the patch outside ignored), 0 elsewhere. ``level >= 1 and level <= iterations + 1`` is
    exactly clDice's ``soft_skeleton(one_hot, iterations)`` (on a binary image its minima, maxima and
    ReLUs are these set operations), so the loss need not skeletonise the reference itself.

Conventions:

- **Ignore label**: voxels labelled ``ignore_index`` belong to no class, so they are "outside" every
  class (a distance may be measured to them); losses mask them out of their own sums.
- **Empty class** (absent from the patch) and **full class** (every voxel of the patch is ``c``):
  there is no boundary, the distances are undefined, and every kind is 0 for that class (Kervadec's
  and Karimi's reference code also give 0 for an absent class). A loss that needs something else
  (the region-wise map) derives it from the target.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

MAP_KINDS = ("signed_distance", "distance", "boundary", "skeleton", "tubed_skeleton", "skeleton_level")
_DISTANCE_KINDS = {"signed_distance", "distance"}


def check_kinds(kinds: Iterable[str]) -> tuple[str, ...]:
    """Validate map kind names; return them in the canonical order of :data:`MAP_KINDS`."""
    kinds = set(kinds)
    unknown = sorted(kinds - set(MAP_KINDS))
    if unknown:
        raise ValueError(f"unknown map kind(s) {unknown}; known kinds: {', '.join(MAP_KINDS)}")
    return tuple(k for k in MAP_KINDS if k in kinds)


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim:
        raise ValueError(f"spacing {spacing} has {len(spacing)} entries for a {ndim}-D label map")
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be positive and finite, got {spacing}")
    return spacing


def check_spacing_argument(spacing: Sequence[float] | None) -> tuple[float, ...] | None:
    """A loss's ``spacing`` argument: ``None`` (voxel units) or positive, finite voxel sizes."""
    if spacing is None:
        return None
    values = tuple(float(s) for s in spacing)
    if not values or not all(np.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be positive and finite voxel sizes, got {tuple(spacing)}")
    return values


def _edt(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distance of every nonzero voxel of ``mask`` to the nearest zero voxel (0 on zero voxels)."""
    import edt

    mask = np.ascontiguousarray(mask)
    if mask.dtype == bool:
        mask = mask.view(np.uint8)  # edt takes a slower path for bool arrays (2.5x on a 40x56x40 patch)
    # black_border=False: the patch border is not background (a patch is a crop of a larger image).
    return edt.edt(mask, anisotropy=spacing, black_border=False, parallel=1)


def case_maps(
    label: np.ndarray,
    num_classes: int,
    kinds: Iterable[str],
    spacing: Sequence[float] | None = None,
    ignore_index: int | None = None,
    classes: Iterable[int] | None = None,
) -> dict[str, np.ndarray]:
    """The requested map kinds of one label map ``[*spatial]`` (2-D or 3-D), each ``[C, *spatial]`` float32.

    ``classes`` limits the work to those class indices (:func:`map_classes` of a loss); the channels
    of the others stay 0. ``None`` computes every class.
    """
    kinds = check_kinds(kinds)
    label = np.asarray(label)
    if label.ndim not in (2, 3):
        raise ValueError(f"a label map must be 2-D or 3-D, got shape {label.shape}")
    if not np.issubdtype(label.dtype, np.integer):
        if not np.all(np.equal(np.mod(label, 1), 0)):
            raise ValueError("label maps must hold integer class indices")
        label = label.astype(np.int64)
    sp = _check_spacing(spacing, label.ndim)
    out = {k: np.zeros((num_classes, *label.shape), dtype=np.float32) for k in kinds}
    if not kinds:
        return out
    present = [c for c in check_classes(classes, num_classes) if c != ignore_index]
    masks = {c: label == c for c in present}
    if _DISTANCE_KINDS & set(kinds):
        for c in present:
            m = masks[c]
            if not m.any() or m.all():
                continue  # empty or full class: no boundary, all maps stay 0
            # Two labels, 2 for c and 1 for everything else (the ignore label included: "not c"): one
            # multi-label pass gives every voxel its distance to the other side, the inside and the
            # outside distance at once (edt treats only 0 as background, and no voxel is 0 here).
            both = _edt(m.view(np.uint8) + 1, sp)
            if "signed_distance" in out:
                out["signed_distance"][c] = np.where(m, -both, both)
            if "distance" in out:
                out["distance"][c] = both
    if "boundary" in out:
        from scipy import ndimage

        cross = ndimage.generate_binary_structure(label.ndim, 1)
        for c in present:
            m = masks[c]
            if m.any() and not m.all():
                out["boundary"][c] = m & ~ndimage.binary_erosion(m, cross, border_value=1)
    if "skeleton" in out or "tubed_skeleton" in out:
        from scipy import ndimage
        from skimage.morphology import skeletonize

        cross = ndimage.generate_binary_structure(label.ndim, 1)
        for c in present:
            m = masks[c]
            if not m.any() or m.all():
                continue
            skel = skeletonize(m)
            if "skeleton" in out:
                out["skeleton"][c] = skel
            if "tubed_skeleton" in out:
                out["tubed_skeleton"][c] = ndimage.binary_dilation(skel, cross, iterations=2) & m
    if "skeleton_level" in out:
        for c in present:
            out["skeleton_level"][c] = skeleton_levels(masks[c])
    return out


def _erode_cross(m: np.ndarray) -> np.ndarray:
    """Binary erosion by the face-connected cross, the outside ignored (a voxel needs its inside neighbours only)."""
    out = m.copy()
    for axis in range(m.ndim):
        lo = [slice(None)] * m.ndim
        hi = [slice(None)] * m.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        out[tuple(hi)] &= m[tuple(lo)]
        out[tuple(lo)] &= m[tuple(hi)]
    return out


def _dilate_cube(m: np.ndarray) -> np.ndarray:
    """Binary dilation by the 3^d cube (separable: one axis at a time), the outside ignored."""
    for axis in range(m.ndim):
        lo = [slice(None)] * m.ndim
        hi = [slice(None)] * m.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        out = m.copy()
        out[tuple(hi)] |= m[tuple(lo)]
        out[tuple(lo)] |= m[tuple(hi)]
        m = out
    return m


def skeleton_levels(mask: np.ndarray) -> np.ndarray:
    """The ``skeleton_level`` map of one binary mask (see the module docstring), float32."""
    mask = np.asarray(mask, dtype=bool)
    level = np.zeros(mask.shape, dtype=np.float32)
    x, k = mask, 0
    while x.any():
        eroded = _erode_cross(x)
        residue = x & ~_dilate_cube(eroded) & (level == 0)
        level[residue] = k + 1
        if np.array_equal(eroded, x):
            break  # a region that no longer erodes (it fills the patch): every later level repeats this one
        x, k = eroded, k + 1
    return level


def skeleton_from_levels(level: torch.Tensor, iterations: int, dtype: torch.dtype) -> torch.Tensor:
    """clDice's reference skeleton with ``iterations`` from a ``skeleton_level`` map: 1 where 1 <= level <= iterations + 1."""
    return ((level >= 1) & (level <= iterations + 1)).to(dtype)


def check_classes(classes: Iterable[int] | None, num_classes: int) -> tuple[int, ...]:
    """Validate a ``classes`` argument (``None``: all ``num_classes``); sorted, without repeats."""
    if classes is None:
        return tuple(range(num_classes))
    out = tuple(sorted({int(c) for c in classes}))
    bad = [c for c in out if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"map classes {bad} are not class indices of a {num_classes}-class label map")
    return out


def compute_maps(
    labels: np.ndarray,
    num_classes: int,
    kinds: Iterable[str],
    spacing: Sequence[float] | None = None,
    ignore_index: int | None = None,
    classes: Iterable[int] | None = None,
) -> dict[str, np.ndarray]:
    """The requested kinds for a batch of label maps ``[B, *spatial]`` (2 or 3 spatial dimensions).

    Returns one float32 array ``[B, C, *spatial]`` per kind (see the module docstring for the
    definitions and the empty-class and ignore-label conventions). A channel axis must be removed
    first (``[B, 1, *spatial]`` is ambiguous with a 3-D map of depth 1).
    """
    kinds = check_kinds(kinds)
    labels = np.asarray(labels)
    if labels.ndim not in (3, 4):
        raise ValueError(f"labels must be [B, *spatial] with 2 or 3 spatial dims, got shape {labels.shape}")
    per_case = [case_maps(lab, num_classes, kinds, spacing, ignore_index, classes) for lab in labels]
    return {k: np.stack([m[k] for m in per_case]) for k in kinds}


def compute_maps_torch(
    target: torch.Tensor,
    num_classes: int,
    kinds: Iterable[str],
    spacing: Sequence[float] | None = None,
    ignore_index: int | None = None,
) -> dict[str, torch.Tensor]:
    """:func:`compute_maps` for a torch target ``[B, *spatial]``; the maps come back on the target's device.

    This is the standalone path of the losses (a round trip through the CPU on every call); inside
    nnU-Net the workers compute the same maps once per patch.
    """
    labels = target.detach().cpu().numpy()
    maps = compute_maps(labels, num_classes, kinds, spacing, ignore_index)
    return {k: torch.from_numpy(v).to(target.device) for k, v in maps.items()}


def extra_input_kinds(loss: nn.Module) -> tuple[str, ...]:
    """The map kinds a loss (and every loss inside it, for compounds) declares in ``extra_inputs``.

    Names that are not map kinds (an auxiliary head's output, say) are left to whoever provides them.
    """
    names = set()
    for module in loss.modules():
        names.update(getattr(module, "extra_inputs", ()) or ())
    return tuple(k for k in MAP_KINDS if k in names)


def map_classes(loss: nn.Module, num_classes: int) -> tuple[int, ...]:
    """The classes whose maps a loss reads: every class, unless every module of it that declares a map
    kind leaves the background out (``include_background=False``), then 1..C-1.

    The workers compute only these (a skeleton of the background, most of a patch, costs as much as
    all the foreground classes together); the other channels are 0 and are never read.
    """
    def declares(m: nn.Module) -> bool:
        return bool(set(getattr(m, "extra_inputs", ()) or ()) & set(MAP_KINDS))

    # A compound declares its components' kinds; the components say which classes they read.
    users = [m for m in loss.modules()
             if declares(m) and not any(declares(d) for d in m.modules() if d is not m)]
    if users and all(getattr(m, "include_background", True) is False for m in users):
        return tuple(range(1, num_classes))
    return tuple(range(num_classes))


# ---------------------------------------------------------------- prediction maps (torch)
def _squared_edt_axis(f: torch.Tensor, axis: int, spacing: float, chunk: int) -> torch.Tensor:
    """One separable pass of the exact squared distance transform along ``axis``: min_j f(j) + ((i-j) s)^2."""
    f = f.movedim(axis, -1)
    n = f.shape[-1]
    idx = torch.arange(n, device=f.device, dtype=f.dtype)
    cost = ((idx[:, None] - idx[None, :]) * spacing) ** 2  # [i, j]
    flat = f.reshape(-1, n)
    out = torch.empty_like(flat)
    rows = max(1, chunk // (n * n))
    for start in range(0, flat.shape[0], rows):
        block = flat[start:start + rows]
        out[start:start + rows] = (block[:, None, :] + cost).amin(-1)
    return out.reshape(f.shape).movedim(-1, axis)


def edt_torch(mask: torch.Tensor, spacing: Sequence[float] | None = None, chunk: int = 1 << 25) -> torch.Tensor:
    """Exact Euclidean distance of every True voxel of ``mask [N, *spatial]`` to the nearest False voxel.

    Separable exact algorithm (the squared distance is a minimum over each axis in turn) evaluated
    by brute force along each line, which is cheap on a GPU for patch-sized lines; ``chunk`` bounds
    the number of elements of one intermediate block. False voxels get 0; a case with no False voxel
    gets +inf (the caller decides what that means).
    """
    ndim = mask.ndim - 1
    sp = _check_spacing(spacing, ndim)
    big = torch.tensor(float("inf"), device=mask.device)
    f = torch.where(mask, big, torch.zeros((), device=mask.device)).float()
    for axis, s in enumerate(sp, start=1):
        f = _squared_edt_axis(f, axis, s, chunk)
    return f.sqrt()


def distance_to_boundary_torch(masks: torch.Tensor, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """Unsigned distance to the boundary of each binary mask ``[N, *spatial]`` (the ``distance`` kind).

    Empty and full masks give 0, as :func:`case_maps`. On CUDA tensors this runs on the GPU
    (:func:`edt_torch`); on the CPU it uses the ``edt`` package.
    """
    masks = masks.bool()
    axes = tuple(range(1, masks.ndim))
    valid = masks.any(axes) & (~masks).any(axes)
    if masks.device.type == "cuda":
        d = torch.where(masks, edt_torch(masks, spacing), edt_torch(~masks, spacing))
    else:
        sp = _check_spacing(spacing, masks.ndim - 1)
        m = masks.cpu().numpy()
        d_np = np.stack([np.where(mi, _edt(mi, sp), _edt(~mi, sp)) if mi.any() and not mi.all()
                         else np.zeros(mi.shape, np.float32) for mi in m])
        d = torch.from_numpy(d_np).to(masks.device)
    shape = (-1,) + (1,) * (masks.ndim - 1)
    return torch.where(valid.reshape(shape), d, torch.zeros((), device=d.device, dtype=d.dtype)).float()


def resolve_map(
    kind: str,
    extras: dict[str, torch.Tensor],
    target: torch.Tensor,
    num_classes: int,
    spacing: Sequence[float] | None = None,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """The ``kind`` map of a loss call: the one handed in (checked), else computed from ``target``.

    ``target`` is the validated ``[B, *spatial]`` label map. Returns float32 ``[B, C, *spatial]``.
    """
    m = extras.get(kind)
    expected = (target.shape[0], num_classes, *target.shape[1:])
    if m is None:
        return compute_maps_torch(target, num_classes, (kind,), spacing, ignore_index)[kind]
    if not isinstance(m, torch.Tensor):
        raise TypeError(f"the {kind!r} map must be a torch.Tensor, got {type(m).__name__}")
    if tuple(m.shape) != expected:
        raise ValueError(f"the {kind!r} map has shape {tuple(m.shape)}, expected [B, C, *spatial] = {expected}")
    return m.to(device=target.device, dtype=torch.float32)

