"""cldice: soft skeleton against scipy, MONAI and scikit-image; hand values; a thin tube against its broken copy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from autoseg.losses import build_loss
from autoseg.losses.boundary._morphology import soft_skeleton
from autoseg.losses.boundary.cldice import ClDiceLoss, cldice_loss, soft_cldice_per_class
from autoseg.losses.region.dice import soft_dice_per_class


def logits_of(labels: torch.Tensor, scale: float = 30.0) -> torch.Tensor:
    return scale * torch.nn.functional.one_hot(labels, 2).movedim(-1, 1).double()


def _scipy_soft_skeleton(img: np.ndarray, iterations: int) -> np.ndarray:
    """Algorithm 1 of Shit et al. with scipy's grey morphology (min over the cross, max over the square).

    mode="nearest" reads the edge voxel for the outside, which for these 3-wide windows equals ignoring it.
    """
    cross = ndimage.generate_binary_structure(img.ndim, 1)

    def erode(x):
        return ndimage.grey_erosion(x, footprint=cross, mode="nearest")

    def opening(x):
        return ndimage.grey_dilation(erode(x), size=(3,) * img.ndim, mode="nearest")

    skel = np.maximum(img - opening(img), 0)
    for _ in range(iterations):
        img = erode(img)
        delta = np.maximum(img - opening(img), 0)
        skel = skel + np.maximum(delta - skel * delta, 0)
    return skel


@pytest.mark.parametrize("iterations", [0, 1, 3, 6])
@pytest.mark.parametrize("shape", [(17, 23), (7, 9, 11)])
def test_soft_skeleton_equals_a_scipy_transcription(shape, iterations):
    rng = np.random.default_rng(len(shape) + iterations)
    img = ndimage.gaussian_filter(rng.random(shape), 1.0)  # smooth, so skeletons are not trivial
    img = (img - img.min()) / (img.max() - img.min())
    ours = soft_skeleton(torch.from_numpy(img)[None, None], iterations)[0, 0].numpy()
    np.testing.assert_allclose(ours, _scipy_soft_skeleton(img, iterations), rtol=0, atol=1e-12)
    assert ours.max() > 0.05


@pytest.mark.parametrize("dim", [2, 3])
def test_soft_skeleton_equals_monai(dim):
    from monai.losses.cldice import soft_skel

    g = torch.Generator().manual_seed(dim)
    x = torch.rand((2, 3) + ((20, 21) if dim == 2 else (8, 9, 10)), generator=g, dtype=torch.float64)
    torch.testing.assert_close(soft_skeleton(x, 5), soft_skel(x, 5), rtol=0, atol=0)


def _shapes():
    t = np.zeros((20, 30), bool)
    t[5:8, 3:27] = True
    t[8:17, 13:16] = True
    bar = np.zeros((16, 40), bool)
    bar[6:9, 2:38] = True
    ell = np.zeros((24, 24), bool)
    ell[3:20, 4:7] = True
    ell[17:20, 4:20] = True
    tube = np.zeros((12, 12, 30), bool)
    tube[5:8, 5:8, 2:28] = True
    yy, xx = np.indices((30, 30))
    ring = np.abs(np.hypot(yy - 15, xx - 15) - 9) <= 1
    return {"T": t, "bar": bar, "L": ell, "tube3d": tube, "ring": ring}


@pytest.mark.parametrize("name", list(_shapes()))
def test_soft_skeleton_of_a_binary_thin_shape_lies_along_scikit_image_skeleton(name):
    from skimage.morphology import skeletonize

    mask = _shapes()[name]
    soft = soft_skeleton(torch.from_numpy(mask.astype(np.float64))[None, None], 3)[0, 0].numpy()
    assert set(np.unique(soft)) <= {0.0, 1.0}  # min/max morphology of a binary image stays binary
    soft = soft > 0.5
    reference = skeletonize(mask)
    near = ndimage.generate_binary_structure(mask.ndim, mask.ndim)  # one voxel, diagonals included
    assert not (soft & ~mask).any()                                  # inside the shape
    assert not (soft & ~ndimage.binary_dilation(reference, near)).any()  # within one voxel of skimage's skeleton
    assert not (reference & ~ndimage.binary_dilation(soft, near)).any()  # and covering it to within one voxel
    if name in ("bar", "L", "tube3d"):
        # Straight tubes and a right-angle bend give a connected soft skeleton; at the T's junction and along
        # the ring's curve it breaks into pieces (a morphological skeleton, not a homotopic thinning).
        assert ndimage.label(soft, near)[1] == ndimage.label(reference, near)[1] == 1


def test_hand_value_line_partly_predicted():
    # A one-voxel line of 6 voxels; the prediction covers its first 3. Each skeleton is the line itself
    # (the opening of a one-voxel line is empty): Tprec = (3 + 1)/(3 + 1) = 1, Tsens = (3 + 1)/(6 + 1) = 4/7,
    # clDice = 2 * 4/7 / (1 + 4/7) = 8/11; Dice (s = 1) = (2 * 3 + 1)/(3 + 6 + 1) = 0.7.
    target = torch.zeros(1, 5, 8, dtype=torch.long)
    target[0, 2, 1:7] = 1
    pred = torch.zeros_like(target)
    pred[0, 2, 1:4] = 1
    logits = logits_of(pred)
    assert float(soft_cldice_per_class(logits, target)[0, 0]) == pytest.approx(8 / 11, rel=1e-9)
    expected = 0.5 * (1 - 0.7) + 0.5 * (1 - 8 / 11)
    assert float(cldice_loss(logits, target)) == pytest.approx(expected, rel=1e-9)
    assert float(cldice_loss(logits, target, alpha=0.2)) == pytest.approx(0.8 * 0.3 + 0.2 * 3 / 11, rel=1e-9)


@pytest.mark.parametrize("dim", [2, 3])
def test_broken_tube_scores_lower_than_the_whole_tube(dim):
    if dim == 2:
        target = torch.zeros(1, 16, 40, dtype=torch.long)
        target[0, 6:9, 2:38] = 1
    else:
        target = torch.zeros(1, 10, 10, 30, dtype=torch.long)
        target[0, 4:7, 4:7, 2:28] = 1
    broken = target.clone()
    broken[..., 18:22] = 0  # a 4-voxel gap cuts the tube in two
    whole_cl = float(soft_cldice_per_class(logits_of(target), target)[0, 0])
    broken_cl = float(soft_cldice_per_class(logits_of(broken), target)[0, 0])
    assert whole_cl == pytest.approx(1.0, abs=1e-9)
    assert broken_cl < whole_cl - 0.02
    assert float(cldice_loss(logits_of(broken), target)) > float(cldice_loss(logits_of(target), target)) + 0.02


def test_thicker_prediction_keeps_clDice_but_loses_Dice():
    # clDice measures the centreline, not the volume: a 5-wide prediction around a 3-wide tube has the same
    # skeleton (inside the reference) and covers the reference skeleton, so clDice stays 1 while Dice is 0.75.
    target = torch.zeros(1, 16, 40, dtype=torch.long)
    target[0, 6:9, 2:38] = 1
    thick = torch.zeros_like(target)
    thick[0, 5:10, 2:38] = 1
    assert float(soft_cldice_per_class(logits_of(thick), target)[0, 0]) == pytest.approx(1.0, abs=1e-9)
    assert float(soft_dice_per_class(logits_of(thick), target, smooth=0)[0, 0]) == pytest.approx(0.75, abs=1e-9)


def test_batch_pools_the_sums_before_the_ratios():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 12, 12, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 12, 12), generator=g)
    pooled = soft_cldice_per_class(logits, target, batch=True)
    assert pooled.shape == (1, 2)
    per_case = soft_cldice_per_class(logits, target)
    assert not torch.allclose(pooled[0], per_case.mean(0))


def test_module_equals_function_and_registry():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 9, 9, generator=g)
    target = torch.randint(0, 3, (2, 9, 9), generator=g)
    kwargs = dict(alpha=0.3, iterations=5, include_background=True, batch=True, smooth=1e-3)
    torch.testing.assert_close(ClDiceLoss(**kwargs)(logits, target), cldice_loss(logits, target, **kwargs))
    assert isinstance(build_loss("cldice"), ClDiceLoss)


@pytest.mark.parametrize("kwargs, message", [({"alpha": 1.5}, "alpha"), ({"iterations": -1}, "iterations"),
                                             ({"iterations": 2.0}, "iterations")])
def test_bad_hyper_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClDiceLoss(**kwargs)


@pytest.mark.parametrize("dim", [2, 3])
def test_soft_skeleton_gradient_passes_gradcheck_and_equals_monai_autograd(dim):
    # the erosion and dilation are a custom autograd Function (a hand-written backward): check it
    # numerically, and against MONAI's max-pooling skeleton differentiated by autograd (random
    # inputs have no ties, where the two may pick different, equally valid subgradients)
    from monai.losses.cldice import soft_skel

    g = torch.Generator().manual_seed(10 + dim)
    small = torch.rand((1, 2) + ((6, 7) if dim == 2 else (4, 5, 3)), generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: soft_skeleton(t, 2), (small.requires_grad_(True),))
    x = torch.rand((2, 2) + ((19, 20) if dim == 2 else (9, 10, 8)), generator=g, dtype=torch.float64)
    weights = torch.rand(x.shape, generator=g, dtype=torch.float64)
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad((soft_skeleton(xa, 3) * weights).sum(), xa)
    (gb,) = torch.autograd.grad((soft_skel(xb, 3) * weights).sum(), xb)
    assert ga.abs().sum() > 0
    # the tracked path (with the gradient bookkeeping) gives the same values as the untracked one
    torch.testing.assert_close(soft_skeleton(xa, 3).detach(), soft_skel(x, 3), rtol=0, atol=0)
    torch.testing.assert_close(ga, gb, rtol=0, atol=1e-12)


@pytest.mark.parametrize("iterations", [0, 1, 3, 8])
@pytest.mark.parametrize("shape", [(31, 27), (13, 17, 15)])
def test_worker_skeleton_level_map_equals_the_soft_skeleton_of_the_one_hot_target(shape, iterations):
    # the data workers' numpy map (autoseg.losses.maps, kind skeleton_level) against the loss's own
    # torch soft skeleton of the one-hot reference, ignored voxels (label 9) zero in the one-hot
    from autoseg.losses._functional import one_hot, valid_mask
    from autoseg.losses.maps import compute_maps, skeleton_from_levels

    rng = np.random.default_rng(len(shape) * 10 + iterations)
    smooth = ndimage.gaussian_filter(rng.random((2, *shape)), (0,) + (2.0,) * len(shape))
    labels = np.digitize(smooth, np.quantile(smooth, [0.4, 0.75])).astype(np.int64)  # 3 blobby classes
    labels[0, ..., :3] = 9
    labels[1, 2:5] = 9
    levels = compute_maps(labels, 3, ("skeleton_level",), ignore_index=9)["skeleton_level"]
    target = torch.from_numpy(labels)
    mask = valid_mask(target, 9)
    expected = soft_skeleton(one_hot(target, 3, mask, torch.float64), iterations)
    got = skeleton_from_levels(torch.from_numpy(levels), iterations, torch.float64)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert expected[:, 1:].sum() > 20  # skeletons are there to compare
    assert levels.max() > iterations + 1 or iterations == 8  # and deeper levels get cut by `iterations`


def test_skeleton_level_of_a_full_patch_and_a_thick_bar_by_hand():
    from autoseg.losses.maps import skeleton_levels

    assert not skeleton_levels(np.ones((5, 6), bool)).any()  # nothing erodes: no skeleton (clDice's too)
    bar = np.zeros((9, 12), bool)
    bar[2:7, 1:11] = True  # 5 rows thick: erodes twice to its middle row, which then opens to nothing
    level = skeleton_levels(bar)
    assert set(np.unique(level)) <= {0.0, 1.0, 2.0, 3.0}
    np.testing.assert_array_equal(level[4, 3:9], 3)  # the middle row enters at erosion level 2
    assert not level[~bar].any()


def test_cldice_with_the_workers_map_equals_standalone_inside_deep_supervision_scales():
    # the loss with the handed-in map equals the standalone loss, value and gradient, with an ignore label
    from autoseg.losses.maps import compute_maps_torch

    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, 3, (2, 12, 14, 10), generator=g)
    target[:, :2] = 7
    logits = torch.randn(2, 3, 12, 14, 10, generator=g, dtype=torch.float64)
    loss = ClDiceLoss(iterations=2, ignore_index=7, include_background=True)
    maps = compute_maps_torch(target, 3, ("skeleton_level",), ignore_index=7)
    a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    va, vb = loss(a, target), loss(b, target, **maps)
    va.backward()
    vb.backward()
    torch.testing.assert_close(vb, va, rtol=0, atol=0)
    torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=0)
    with pytest.raises(ValueError, match="skeleton_level"):
        loss(logits, target, skeleton_level=maps["skeleton_level"][:, :2])
