"""Metrics against analytic shapes, hand-worked cases, an independent scipy HD95 and nnU-Net's counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from autoseg.evaluation.metrics import case_metrics, image_diagonal, pooled_iou


def ball(shape, spacing, radius_mm):
    """Mask of a sphere (disk in 2D) of ``radius_mm`` around the image centre, in physical coordinates."""
    g = np.indices(shape).astype(float)
    centre = [(n - 1) / 2 for n in shape]
    return (sum(((g[i] - centre[i]) * spacing[i]) ** 2 for i in range(len(shape))) <= radius_mm ** 2).astype(np.uint8)


def scipy_directed(pred, ref, spacing):
    """Independent reference: boundary voxels by erosion, distances by EDT; both directed distance sets."""
    def boundary(m):
        return m & ~ndimage.binary_erosion(m, border_value=0)

    bp, br = boundary(pred.astype(bool)), boundary(ref.astype(bool))
    d_to_r = ndimage.distance_transform_edt(~br, sampling=spacing)[bp]
    d_to_p = ndimage.distance_transform_edt(~bp, sampling=spacing)[br]
    return d_to_r, d_to_p


def scipy_hd95(pred, ref, spacing):
    """The maximum of the two directed 95th percentiles."""
    return max(np.percentile(d, 95) for d in scipy_directed(pred, ref, spacing))


# (shape, spacing, inner radius, outer radius) in mm: isotropic non-unit, anisotropic 3D, anisotropic 2D
CONCENTRIC = [
    ((40, 40, 40), (0.5, 0.5, 0.5), 5.0, 8.0),
    ((20, 40, 40), (1.0, 0.5, 0.5), 5.0, 8.0),
    ((30, 120), (2.0, 0.5), 10.0, 16.0),
]


@pytest.mark.parametrize("shape,spacing,r_in,r_out", CONCENTRIC)
def test_concentric_shapes_have_known_dice_hd95_and_nsd(shape, spacing, r_in, r_out):
    ref, pred = ball(shape, spacing, r_in), ball(shape, spacing, r_out)
    gap = r_out - r_in  # every surface point of one shape is exactly `gap` from the other surface
    d = len(shape)
    slack = max(spacing)  # the surfaces are sampled on the voxel grid
    m = case_metrics(pred, ref, [1], spacing, tolerance_mm=gap + 2 * slack)[0]
    assert m["dice"] == pytest.approx(2 * r_in ** d / (r_in ** d + r_out ** d), abs=0.01)
    assert m["iou"] == pytest.approx((r_in / r_out) ** d, abs=0.01)
    assert m["hd95"] == pytest.approx(gap, abs=slack)
    assert m["nsd"] == pytest.approx(1.0)
    assert case_metrics(pred, ref, [1], spacing, tolerance_mm=gap - 2 * slack)[0]["nsd"] == pytest.approx(0.0)


def test_spacing_is_honoured():
    shape, spacing = (40, 40, 40), (0.5, 0.5, 0.5)
    ref, pred = ball(shape, spacing, 5.0), ball(shape, spacing, 8.0)
    in_mm = case_metrics(pred, ref, [1], spacing, tolerance_mm=4.0)[0]
    in_voxels = case_metrics(pred, ref, [1], None, tolerance_mm=4.0)[0]
    assert in_mm["hd95"] == pytest.approx(3.0, abs=0.5)
    assert in_voxels["hd95"] == pytest.approx(6.0, abs=1.0)  # the same gap counted in voxels
    assert in_mm["nsd"] == pytest.approx(1.0) and in_voxels["nsd"] < 0.1


@pytest.mark.parametrize("spacing,expected", [((1.0, 1.0), 5.0), ((2.0, 1.0), math.sqrt(6 ** 2 + 4 ** 2))])
def test_single_voxels_hd95_is_their_distance(spacing, expected):
    ref = np.zeros((8, 8), np.uint8)
    pred = np.zeros((8, 8), np.uint8)
    ref[1, 1] = 1
    pred[4, 5] = 1  # 3 rows and 4 columns away
    m = case_metrics(pred, ref, [1], spacing, tolerance_mm=1.0)[0]
    assert m["hd95"] == pytest.approx(expected, rel=1e-6)
    assert m["dice"] == 0.0 and m["nsd"] == 0.0


def test_hd95_is_max_of_directed_percentiles_not_pooled():
    # reference: a block; prediction: the same block plus a stray blob 10+ voxels away. Pred->ref has many large
    # distances among its boundary voxels; ref->pred has none. The pooled percentile (medpy) dilutes them.
    ref = np.zeros((40, 40), np.uint8)
    ref[5:25, 5:25] = 1
    pred = ref.copy()
    pred[33:38, 33:38] = 1
    spacing = (1.0, 1.0)
    m = case_metrics(pred, ref, [1], spacing)[0]
    d_to_r, d_to_p = scipy_directed(pred, ref, spacing)
    assert m["hd95"] == pytest.approx(max(np.percentile(d_to_r, 95), np.percentile(d_to_p, 95)), rel=1e-5)
    pooled = np.percentile(np.concatenate([d_to_r, d_to_p]), 95)
    assert m["hd95"] > pooled + 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_matches_an_independent_scipy_implementation(seed):
    rng = np.random.default_rng(seed)
    shape, spacing = (16, 24, 24), (2.5, 0.8, 0.8)
    ref = ndimage.binary_dilation(rng.random(shape) > 0.995, iterations=3).astype(np.uint8)
    pred = ndimage.binary_dilation(rng.random(shape) > 0.995, iterations=3).astype(np.uint8)
    m = case_metrics(pred, ref, [1], spacing)[0]
    assert m["hd95"] == pytest.approx(scipy_hd95(pred, ref, spacing), rel=1e-5)


def test_identical_masks_are_perfect():
    ref = ball((20, 20, 20), (1.0, 1.0, 1.0), 6.0)
    m = case_metrics(ref.copy(), ref, [1], (1.0, 1.0, 1.0), tolerance_mm=0.0)[0]
    assert (m["dice"], m["iou"], m["hd95"], m["nsd"]) == (1.0, 1.0, 0.0, 1.0)


@pytest.mark.parametrize(
    "ref_on,pred_on,expected",
    [
        (False, False, (1.0, 1.0, 0.0, 1.0)),
        (False, True, (0.0, 0.0, math.sqrt(4 ** 2 + 12 ** 2), 0.0)),
        (True, False, (0.0, 0.0, math.sqrt(4 ** 2 + 12 ** 2), 0.0)),
    ],
)
def test_empty_structure_policy(ref_on, pred_on, expected):
    shape, spacing = (4, 6), (1.0, 2.0)  # diagonal sqrt(4^2 + 12^2) mm
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    if ref_on:
        ref[1, 1] = 1
    if pred_on:
        pred[2, 3] = 1
    m = case_metrics(pred, ref, [1], spacing)[0]
    assert (m["dice"], m["iou"], m["hd95"], m["nsd"]) == pytest.approx(expected)
    assert (m["ref_empty"], m["pred_empty"]) == (not ref_on, not pred_on)
    assert image_diagonal(shape, spacing) == pytest.approx(math.sqrt(160))


def test_ignore_label_voxels_are_left_out_by_hand():
    ref = np.array([[0, 1, 1, 255], [0, 1, 255, 255]])
    pred = np.array([[1, 1, 0, 1], [0, 1, 1, 1]])
    m = case_metrics(pred, ref, [0, 1], None, ignore_label=255, distances=False)
    # 5 valid voxels; label 1: pred at (0,0),(0,1),(1,1) -> TP 2, FP 1, FN 1 (ref (0,2)); TN 1 ((1,0))
    one = m[1]
    assert (one["tp"], one["fp"], one["fn"], one["tn"]) == (2, 1, 1, 1)
    assert one["dice"] == pytest.approx(4 / 6) and one["iou"] == pytest.approx(2 / 4)
    assert math.isnan(one["hd95"]) and math.isnan(one["nsd"])
    zero = m[0]  # label 0: ref (0,0),(1,0); pred (0,2),(1,0) -> TP 1, FP 1, FN 1
    assert (zero["tp"], zero["fp"], zero["fn"]) == (1, 1, 1)


def test_counts_match_nnunet():
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn

    rng = np.random.default_rng(3)
    ref = rng.integers(0, 4, (6, 7, 8))
    pred = rng.integers(0, 3, (6, 7, 8))
    ignore = ref == 3
    rows = case_metrics(pred, ref, [1, 2], None, ignore_label=3, distances=False)
    for row in rows:
        tp, fp, fn, tn = compute_tp_fp_fn_tn(ref == row["label"], pred == row["label"], ignore)
        assert (row["tp"], row["fp"], row["fn"], row["tn"]) == (tp, fp, fn, tn)


def test_two_d_image_stored_with_a_singleton_axis_gives_the_same_distances():
    ref2, pred2 = ball((30, 30), (1.0, 1.0), 6.0), ball((30, 30), (1.0, 1.0), 9.0)
    flat = case_metrics(pred2, ref2, [1], (1.0, 1.0), tolerance_mm=2.0)[0]
    stacked = case_metrics(pred2[None], ref2[None], [1], (999.0, 1.0, 1.0), tolerance_mm=2.0)[0]
    assert stacked["hd95"] == pytest.approx(flat["hd95"]) and stacked["nsd"] == pytest.approx(flat["nsd"])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="same shape"):
        case_metrics(np.zeros((3, 3)), np.zeros((3, 4)), [1])
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(np.zeros((3, 3)), np.zeros((3, 3)), [1], spacing=(1.0,))
    with pytest.raises(ValueError, match="positive"):
        case_metrics(np.zeros((3, 3)), np.zeros((3, 3)), [1], spacing=(1.0, 0.0))


def test_pooled_iou_is_one_confusion_matrix_by_hand():
    # two images, two classes: class 0 TP 3+1, FP 1+0, FN 0+2 -> 4/(4+1+2); class 1 absent everywhere -> NaN
    tp = np.array([[3, 0], [1, 0]])
    fp = np.array([[1, 0], [0, 0]])
    fn = np.array([[0, 0], [2, 0]])
    iou = pooled_iou(tp, fp, fn)
    assert iou[0] == pytest.approx(4 / 7) and math.isnan(iou[1])


@pytest.mark.parametrize("tau", [1.0, 2.0, 3.0])
def test_nsd_of_shifted_disks_matches_the_arc_length_fraction(tau):
    # two disks of radius R, centres e apart: a point at angle theta on one circle lies
    # | sqrt(R^2 - 2 R e cos(theta) + e^2) - R | from the other; NSD is the share of arc length within tau
    # (the same on both circles by symmetry), computed here from the geometry on a fine grid of angles
    spacing, radius, e, n = (0.25, 0.25), 20.0, 4.0, 240
    g = np.indices((n, n)).astype(float) * 0.25
    c = (n - 1) / 2 * 0.25
    a = ((g[0] - c) ** 2 + (g[1] - c) ** 2 <= radius ** 2).astype(np.uint8)
    b = ((g[0] - c) ** 2 + (g[1] - c - e) ** 2 <= radius ** 2).astype(np.uint8)
    theta = np.linspace(0, 2 * np.pi, 100_000, endpoint=False)
    distance = np.abs(np.sqrt(radius ** 2 - 2 * radius * e * np.cos(theta) + e ** 2) - radius)
    expected = float((distance <= tau).mean())
    assert case_metrics(b, a, [1], spacing, tolerance_mm=tau)[0]["nsd"] == pytest.approx(expected, abs=0.03)


def test_2d_image_stored_as_1xHxW_with_dummy_spacing_999():
    # nnU-Net stores a 2D image as 1 x H x W and gives the dummy axis a spacing of 999
    h, w, sp = 20, 30, (0.5, 0.5)
    ref2d = ball((h, w), sp, 3.0)
    pred2d = np.roll(ref2d, 3, axis=1)
    ref, pred = ref2d[None], pred2d[None]
    dummy = (999.0,) + sp
    in_plane = math.hypot(h * sp[0], w * sp[1])  # 18.03 mm, where the dummy axis would give ~999
    missed = case_metrics(np.zeros_like(ref), ref, [1], dummy)[0]
    assert missed["hd95"] == pytest.approx(in_plane)
    false_positive = case_metrics(ref, np.zeros_like(ref), [1], dummy)[0]
    assert false_positive["hd95"] == pytest.approx(in_plane) and false_positive["nsd"] == 0.0
    assert image_diagonal(ref.shape, dummy) == pytest.approx(in_plane)
    # a real comparison: the same HD95 and NSD as the 2D image, and the independent scipy HD95 in the plane
    flat = case_metrics(pred2d, ref2d, [1], sp, tolerance_mm=1.0)[0]
    stored = case_metrics(pred, ref, [1], dummy, tolerance_mm=1.0)[0]
    assert stored["hd95"] == pytest.approx(flat["hd95"]) and stored["nsd"] == pytest.approx(flat["nsd"])
    assert stored["hd95"] == pytest.approx(scipy_hd95(pred2d, ref2d, sp), rel=1e-5)
    assert stored["hd95"] == pytest.approx(1.5)  # shifted by 3 columns of 0.5 mm
