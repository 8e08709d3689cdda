"""Per-case, per-class segmentation metrics (Dice, IoU, HD95, NSD) with one policy for empty structures.

Definitions (docs/evaluation.md has the long form):

* ``dice = 2 TP / (2 TP + FP + FN)`` and ``iou = TP / (TP + FP + FN)`` over the voxels of one case and class;
  voxels whose reference is the dataset's ``ignore`` label are left out of every count.
* ``hd95``: the maximum of the two directed 95th percentiles of boundary-voxel distances (prediction to reference
  and reference to prediction), in mm, boundary voxels being the mask minus its erosion. Computed with MONAI's
  :func:`monai.metrics.compute_hausdorff_distance` (``percentile=95``, linear interpolation between order
  statistics). This is *not* medpy's ``hd95`` (the 95th percentile of both directions pooled), which lies
  between the two directed percentiles.
* ``nsd``: the normalised surface distance (surface Dice) at a tolerance ``tau`` in mm, surface-element weighted as
  DeepMind's ``surface-distance`` (MONAI's :func:`monai.metrics.compute_surface_dice` with ``use_subvoxels=True``):
  the area of each surface within ``tau`` of the other surface, over the total area of both surfaces.

Empty-structure policy, applied per case and class before anything is aggregated (so means, ranks and tests all
see the same finite numbers):

==========================  ======  =====  ==============  =====
reference / prediction      dice    iou    hd95            nsd
==========================  ======  =====  ==============  =====
both empty                  1       1      0               1
exactly one empty           0       0      image diagonal  0
==========================  ======  =====  ==============  =====

The "image diagonal" is the largest distance possible inside the image (its physical extent), the same worst case
the BraTS challenges use. Rows carry ``ref_empty`` and ``pred_empty`` so a reader can leave those cases out.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

# Bump when a definition changes: cached per-case results computed under another version are recomputed.
METRICS_VERSION = 2  # 2: the diagonal of 1 x H x W images leaves out the dummy axis

HIGHER_IS_BETTER = {"dice": True, "iou": True, "hd95": False, "nsd": True}
METRIC_NAMES = ("dice", "iou", "hd95", "nsd")


def image_diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Physical length of the image diagonal, the worst-case distance used when one structure is empty.

    Singleton axes are left out, as they are for the distances themselves: a 2D image stored as 1 x H x W carries
    nnU-Net's dummy spacing 999 on its first axis, and no distance inside the image runs along it.
    """
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing) if n > 1)))


def _check_pair(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None) -> tuple[float, ...]:
    if pred.shape != ref.shape:
        raise ValueError(f"prediction and reference must have the same shape, got {pred.shape} and {ref.shape}")
    if spacing is None:
        spacing = (1.0,) * ref.ndim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ref.ndim:
        raise ValueError(f"spacing must have one value per axis ({ref.ndim}), got {spacing}")
    if any(not (s > 0 and math.isfinite(s)) for s in spacing):
        raise ValueError(f"spacing must be positive and finite, got {spacing}")
    return spacing


def _squeeze(mask_a: np.ndarray, mask_b: np.ndarray, spacing: tuple[float, ...]):
    """Drop singleton axes (a 2D image stored as 1 x H x W): MONAI's edges need 2 or 3 real axes."""
    keep = [i for i, n in enumerate(mask_a.shape) if n > 1]
    if len(keep) == mask_a.ndim:
        return mask_a, mask_b, spacing
    shape = tuple(mask_a.shape[i] for i in keep)
    return mask_a.reshape(shape), mask_b.reshape(shape), tuple(spacing[i] for i in keep)


def _crop_to_union(mask_a: np.ndarray, mask_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union plus one voxel (clipped at the image border).

    MONAI crops the same way itself, but only after converting the whole volume to float per class; cropping first
    gives identical distances at a fraction of the memory.
    """
    union = mask_a | mask_b
    slices = []
    for axis in range(union.ndim):
        other = tuple(i for i in range(union.ndim) if i != axis)
        idx = np.flatnonzero(union.any(axis=other))
        slices.append(slice(max(int(idx[0]) - 1, 0), min(int(idx[-1]) + 2, union.shape[axis])))
    sl = tuple(slices)
    return mask_a[sl], mask_b[sl]


def surface_distances_monai(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], tolerance_mm: float
) -> tuple[float, float]:
    """HD95 (mm) and NSD at ``tolerance_mm`` of two non-empty binary masks, through MONAI.

    Both masks must be non-empty (the empty-structure policy is applied by the caller).
    """
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    a, b, sp = _squeeze(np.asarray(pred, bool), np.asarray(ref, bool), tuple(spacing))
    if a.ndim not in (2, 3):
        raise ValueError(f"surface distances need 2 or 3 non-singleton axes, got shape {pred.shape}")
    a, b = _crop_to_union(a, b)
    ta = torch.from_numpy(np.ascontiguousarray(a))[None, None]
    tb = torch.from_numpy(np.ascontiguousarray(b))[None, None]
    with warnings.catch_warnings():  # MONAI warns about its own deprecated internal argument
        warnings.simplefilter("ignore", FutureWarning)
        hd = compute_hausdorff_distance(ta, tb, include_background=True, percentile=95, spacing=list(sp))
        nsd = compute_surface_dice(ta.float(), tb.float(), [float(tolerance_mm)], include_background=True,
                                   spacing=list(sp), use_subvoxels=True)
    return float(hd[0, 0]), float(nsd[0, 0])


def confusion_counts(pred: np.ndarray, ref: np.ndarray, label: int, valid: np.ndarray | None = None):
    """TP, FP, FN, TN of one label, counting only voxels where ``valid`` is true."""
    p = pred == label
    r = ref == label
    if valid is not None:
        p = p & valid
        r = r & valid
        n = int(valid.sum())
    else:
        n = int(p.size)
    tp = int(np.count_nonzero(p & r))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(r)) - tp
    return tp, fp, fn, n - tp - fp - fn


def case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    labels: Sequence[int],
    spacing: Sequence[float] | None = None,
    tolerance_mm: float = 2.0,
    ignore_label: int | None = None,
    distances: bool = True,
) -> list[dict]:
    """Metrics of one case for each label in ``labels``: one dict per label.

    Args:
        pred, ref: integer label maps of the same shape (numpy axis order).
        labels: the label values to evaluate (background included only if asked for).
        spacing: voxel size in mm per numpy axis; ``None`` means 1.
        tolerance_mm: NSD tolerance in mm.
        ignore_label: reference value whose voxels are left out (nnU-Net's ``ignore`` label).
        distances: compute HD95 and NSD (costly); when false they are NaN.

    Returns:
        ``[{"label", "tp", "fp", "fn", "tn", "n_ref", "n_pred", "ref_empty", "pred_empty",
        "dice", "iou", "hd95", "nsd"}, ...]`` with the empty-structure policy of this module applied.

    Example:
        >>> ref = np.zeros((4, 4), int); ref[1:3, 1:3] = 1
        >>> case_metrics(ref.copy(), ref, [1])[0]["dice"]
        1.0
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    sp = _check_pair(pred, ref, spacing)
    valid = None if ignore_label is None else ref != ignore_label
    diagonal = image_diagonal(ref.shape, sp)
    rows = []
    for label in labels:
        label = int(label)
        tp, fp, fn, tn = confusion_counts(pred, ref, label, valid)
        n_ref, n_pred = tp + fn, tp + fp
        ref_empty, pred_empty = n_ref == 0, n_pred == 0
        if ref_empty and pred_empty:
            dice = iou = nsd = 1.0
            hd95 = 0.0
        elif ref_empty or pred_empty:
            dice = iou = nsd = 0.0
            hd95 = diagonal
        else:
            dice = 2 * tp / (2 * tp + fp + fn)
            iou = tp / (tp + fp + fn)
            if distances:
                p = pred == label
                if valid is not None:
                    p = p & valid
                hd95, nsd = surface_distances_monai(p, ref == label, sp, tolerance_mm)
            else:
                hd95 = nsd = float("nan")
        if not distances:  # not computed at all: NaN everywhere rather than policy values beside gaps
            hd95 = nsd = float("nan")
        rows.append({"label": label, "tp": tp, "fp": fp, "fn": fn, "tn": tn, "n_ref": n_ref, "n_pred": n_pred,
                     "ref_empty": ref_empty, "pred_empty": pred_empty,
                     "dice": float(dice), "iou": float(iou), "hd95": float(hd95), "nsd": float(nsd)})
    return rows


def pooled_iou(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, axis: int = 0) -> np.ndarray:
    """Dataset-level IoU as Cityscapes reports it: summed TP over summed TP + FP + FN (one confusion matrix).

    A class absent from every reference and every prediction gets NaN (Cityscapes leaves it out of the mIoU).
    """
    tp, fp, fn = (np.asarray(x, dtype=np.float64).sum(axis=axis) for x in (tp, fp, fn))
    return ratio_or_nan(tp, tp + fp + fn)


def ratio_or_nan(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` where ``den > 0``, NaN elsewhere (an undefined ratio is left out of means, not 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def nanmean_last(x: np.ndarray) -> np.ndarray:
    """Mean over the last axis leaving NaN out (NaN where all are), without numpy's empty-slice warning."""
    ok = ~np.isnan(x)
    return ratio_or_nan(np.where(ok, x, 0).sum(-1), ok.sum(-1))


def pooled_precision_recall(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray,
                            axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dataset-level precision TP / (TP + FP), recall TP / (TP + FN) and volume ratio (TP + FP) / (TP + FN)
    (predicted over reference volume: above 1 over-segments) from counts summed over ``axis``.

    Precision is NaN where nothing was predicted, recall and the volume ratio where the reference is empty.
    """
    tp, fp, fn = (np.nan_to_num(np.asarray(x, dtype=np.float64)).sum(axis=axis) for x in (tp, fp, fn))
    predicted, present = tp + fp, tp + fn
    return ratio_or_nan(tp, predicted), ratio_or_nan(tp, present), ratio_or_nan(predicted, present)
