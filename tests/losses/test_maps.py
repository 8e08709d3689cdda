"""Loss maps against independent references: scipy's exact distance transform, scikit-image's skeletons."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.morphology import dilation, skeletonize

from autoseg.losses.maps import (
    MAP_KINDS,
    case_maps,
    compute_maps,
    compute_maps_torch,
    distance_to_boundary_torch,
    edt_torch,
    extra_input_kinds,
)

IGNORE = 9


def blobs(shape, num_classes, seed=0, ignore_fraction=0.0):
    """A smooth random label map (regions, not salt and pepper), optionally with ignored voxels."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=(num_classes, *shape)), sigma=[0] + [2] * len(shape))
    label = noise.argmax(0).astype(np.int16)
    if ignore_fraction:
        label[ndimage.gaussian_filter(rng.normal(size=shape), 2) > np.quantile(
            ndimage.gaussian_filter(rng.normal(size=shape), 2), 1 - ignore_fraction)] = IGNORE
    return label


def scipy_signed(label, c, spacing):
    m = label == c
    if not m.any() or m.all():
        return np.zeros(label.shape)
    return np.where(m, -ndimage.distance_transform_edt(m, sampling=spacing),
                    ndimage.distance_transform_edt(~m, sampling=spacing))


@pytest.mark.parametrize("shape,spacing", [((40, 33), None), ((40, 33), (0.7, 2.5)),
                                           ((18, 21, 16), None), ((18, 21, 16), (3.0, 0.8, 1.1))])
@pytest.mark.parametrize("ignore", [False, True])
def test_distances_equal_scipy(shape, spacing, ignore):
    label = blobs(shape, 3, seed=len(shape), ignore_fraction=0.1 if ignore else 0.0)
    maps = case_maps(label, 3, ("signed_distance", "distance"), spacing, IGNORE if ignore else None)
    sp = spacing or (1.0,) * len(shape)
    for c in range(3):
        expected = scipy_signed(label, c, sp)
        np.testing.assert_allclose(maps["signed_distance"][c], expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(maps["distance"][c], np.abs(expected), rtol=1e-5, atol=1e-5)
        inside = label == c
        assert (maps["signed_distance"][c][inside] < 0).all() and (maps["signed_distance"][c][~inside] > 0).all()
        assert maps["signed_distance"][c][inside].max() == pytest.approx(-min(sp), rel=1e-6)


def test_empty_and_full_classes_give_zero_maps():
    label = np.zeros((12, 10), np.int16)
    label[3:7, 2:5] = 1  # class 2 absent
    maps = case_maps(label, 3, MAP_KINDS)
    for kind in MAP_KINDS:
        assert not maps[kind][2].any(), kind
        assert maps[kind][1].any(), kind
    full = case_maps(np.ones((6, 7), np.int16), 2, MAP_KINDS)
    for kind in MAP_KINDS:
        assert not full[kind].any(), kind


def test_ignored_voxels_are_outside_every_class():
    label = np.zeros((9, 9), np.int16)
    label[:, 5:] = IGNORE
    maps = case_maps(label, 2, ("signed_distance", "boundary"), ignore_index=IGNORE)
    # class 0 ends at column 4: its boundary and its distances are measured against the ignored block
    assert maps["boundary"][0][:, 4].all() and not maps["boundary"][0][:, :4].any()
    np.testing.assert_allclose(maps["signed_distance"][0][0, 5:], [1, 2, 3, 4])
    assert not maps["signed_distance"][1].any()  # class 1 is absent


def test_boundary_is_the_inner_face_connected_boundary():
    label = blobs((30, 26), 3, seed=3)
    maps = case_maps(label, 3, ("boundary",))
    padded = np.pad(label, 1, mode="edge")  # the patch border is not a boundary
    for c in range(3):
        expected = np.zeros(label.shape, bool)
        for axis in range(2):
            for step in (-1, 1):
                shifted = np.roll(padded, step, axis=axis)[1:-1, 1:-1]
                expected |= (label == c) & (shifted != c)
        np.testing.assert_array_equal(maps["boundary"][c], expected)


@pytest.mark.parametrize("shape", [(48, 40), (20, 24, 22)])
def test_skeletons_equal_scikit_image(shape):
    label = blobs(shape, 3, seed=5)
    maps = case_maps(label, 3, ("skeleton", "tubed_skeleton"))
    for c in range(3):
        m = label == c
        skel = skeletonize(m)
        assert skel.any()
        np.testing.assert_array_equal(maps["skeleton"][c], skel)
        # Kirchhoff et al.'s transform: dilation(dilation(skeleton)) with skimage's default footprint, cut to the mask
        np.testing.assert_array_equal(maps["tubed_skeleton"][c], dilation(dilation(skel)) & m)


def test_batch_and_torch_wrappers():
    labels = np.stack([blobs((16, 18), 2, seed=s) for s in range(3)])
    maps = compute_maps(labels, 2, ("distance", "skeleton"), spacing=(1.0, 2.0))
    assert maps["distance"].shape == (3, 2, 16, 18) and maps["distance"].dtype == np.float32
    for b in range(3):
        np.testing.assert_array_equal(maps["distance"][b], case_maps(labels[b], 2, ("distance",), (1.0, 2.0))["distance"])
    tmaps = compute_maps_torch(torch.from_numpy(labels).long(), 2, ["distance"], spacing=(1.0, 2.0))
    assert isinstance(tmaps["distance"], torch.Tensor)
    np.testing.assert_array_equal(tmaps["distance"].numpy(), maps["distance"])


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="unknown map kind"):
        case_maps(np.zeros((4, 4), int), 2, ("sdf",))
    with pytest.raises(ValueError, match="spacing"):
        case_maps(np.zeros((4, 4), int), 2, ("distance",), spacing=(1.0,))
    with pytest.raises(ValueError, match=r"\[B, \*spatial\]"):
        compute_maps(np.zeros((4,), int), 2, ("distance",))


@pytest.mark.parametrize("spacing", [None, (1.5, 0.5, 2.0)])
def test_torch_edt_equals_scipy(spacing):
    masks = np.stack([blobs((14, 12, 15), 2, seed=s) == 1 for s in range(2)])
    d = edt_torch(torch.from_numpy(masks), spacing, chunk=4096).numpy()
    for m, dm in zip(masks, d):
        np.testing.assert_allclose(dm, ndimage.distance_transform_edt(m, sampling=spacing or (1, 1, 1)), rtol=1e-5)
    unsigned = distance_to_boundary_torch(torch.from_numpy(masks), spacing).numpy()
    for m, u in zip(masks, unsigned):
        np.testing.assert_allclose(u, np.abs(scipy_signed(m.astype(int), 1, spacing or (1, 1, 1))), rtol=1e-5)


def test_extra_input_kinds_collects_compound_components():
    from autoseg.losses import build_loss

    assert extra_input_kinds(build_loss("dice")) == ()
    assert extra_input_kinds(build_loss("boundary")) == ("signed_distance",)
    assert set(extra_input_kinds(build_loss("hausdorff_dt"))) == {"distance"}


@pytest.mark.parametrize("shape,spacing", [((40, 33), (0.7, 2.5)), ((18, 21, 16), (3.0, 0.8, 1.1))])
def test_maps_of_chosen_classes_equal_the_full_maps_and_leave_the_others_zero(shape, spacing):
    label = blobs(shape, 3, seed=5, ignore_fraction=0.1)
    full = case_maps(label, 3, MAP_KINDS, spacing, IGNORE)
    part = case_maps(label, 3, MAP_KINDS, spacing, IGNORE, classes=(2, 1))
    for kind in MAP_KINDS:
        assert full[kind][1:].any(), kind  # the comparison is not between zeros
        np.testing.assert_array_equal(part[kind][1:], full[kind][1:], err_msg=kind)
        assert not part[kind][0].any(), kind
    batch = compute_maps(np.stack([label, label]), 3, ("distance",), spacing, IGNORE, classes=[1])
    np.testing.assert_array_equal(batch["distance"][:, 1], np.stack([full["distance"][1]] * 2))
    assert not batch["distance"][:, [0, 2]].any()
    with pytest.raises(ValueError, match=r"map classes \[3\] are not class indices of a 3-class"):
        case_maps(label, 3, ("distance",), classes=(1, 3))


def test_map_classes_skip_the_background_only_when_every_map_reader_leaves_it_out():
    from autoseg.losses import build_loss
    from autoseg.losses.compound import CompoundLoss
    from autoseg.losses.maps import map_classes

    assert map_classes(build_loss("boundary"), 4) == (1, 2, 3)
    assert map_classes(build_loss("boundary", include_background=True), 4) == (0, 1, 2, 3)
    assert map_classes(build_loss("region_wise"), 3) == (0, 1, 2)  # its default keeps the background
    assert map_classes(build_loss("dice_ce"), 3) == (0, 1, 2)  # reads no map: nothing to skip for
    # a compound: the components decide, and one that reads the background keeps it for all
    fg_only = CompoundLoss([("b", build_loss("boundary")), ("s", build_loss("skeleton_recall"))], [1.0, 1.0])
    assert map_classes(fg_only, 3) == (1, 2)
    mixed = CompoundLoss([("b", build_loss("boundary")), ("r", build_loss("region_wise"))], [1.0, 1.0])
    assert map_classes(mixed, 3) == (0, 1, 2)
