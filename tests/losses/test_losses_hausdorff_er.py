"""hausdorff_er: hand values, kornia's HausdorffERLoss and a scipy transcription as references, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from autoseg.losses import build_loss
from autoseg.losses.boundary.hausdorff_er import HausdorffERLoss, erosion_residuals, hausdorff_er_loss

C = 3


def confident(labels: torch.Tensor, num_classes: int = 2) -> torch.Tensor:
    return 30.0 * torch.nn.functional.one_hot(labels, num_classes).movedim(-1, 1).double()


def test_smoke_2d_3d():
    for shape in [(2, C, 12, 12), (2, C, 6, 7, 8)]:
        logits = torch.randn(shape)
        target = torch.randint(0, C, (shape[0], *shape[2:]))
        value = hausdorff_er_loss(logits, target)
        assert value.shape == () and torch.isfinite(value)


def test_hand_value_full_error_3x3():
    # Every voxel is class 1, predicted confidently as 0, so (p - t)^2 = 1 on the 3 x 3 image (channel 1).
    # Erosion 1: cross mean (zero padding) 1 / 0.8 / 0.6 at centre / edges / corners, minus 0.5 -> .5/.3/.1,
    # rescaled to [0, 1] -> 1 / 0.5 / 0 (sum 3). Erosion 2: means .6/.3/.2 -> .1/0/0 -> 1/0/0 (sum 1).
    # Erosion 3: centre mean .2 < .5 -> all 0. Loss = (1^a * 3 + 2^a * 1) / 9.
    target = torch.ones(1, 3, 3, dtype=torch.long)
    logits = confident(torch.zeros(1, 3, 3, dtype=torch.long))
    for alpha, expected in [(2.0, 7 / 9), (1.0, 5 / 9), (0.0, 4 / 9)]:
        value = hausdorff_er_loss(logits, target, alpha=alpha, weight_dice=0)
        assert float(value) == pytest.approx(expected, rel=1e-12)


def test_hand_value_single_erosion():
    target = torch.ones(1, 3, 3, dtype=torch.long)
    logits = confident(torch.zeros(1, 3, 3, dtype=torch.long))
    assert float(hausdorff_er_loss(logits, target, erosions=1, weight_dice=0)) == pytest.approx(3 / 9, rel=1e-12)


def test_dice_term_is_added_with_its_weight():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, C, 10, 10, generator=g)
    target = torch.randint(0, C, (2, 10, 10), generator=g)
    er = hausdorff_er_loss(logits, target, weight_dice=0)
    dice = build_loss("dice")(logits, target)
    torch.testing.assert_close(hausdorff_er_loss(logits, target, weight_dice=0.3), er + 0.3 * dice)


@pytest.mark.parametrize("dim", [2, 3])
def test_equals_kornia_hausdorff_er(dim):
    from kornia.losses import HausdorffERLoss as KorniaER
    from kornia.losses import HausdorffERLoss3D as KorniaER3D

    g = torch.Generator().manual_seed(dim)
    shape = (2, C, 16, 16) if dim == 2 else (2, C, 8, 9, 10)
    # Large logits make thick error regions that survive several erosions.
    logits = 4 * torch.randn(shape, generator=g, dtype=torch.float64)
    target = torch.randint(0, C, (shape[0], *shape[2:]), generator=g)
    reference = (KorniaER if dim == 2 else KorniaER3D)(alpha=2.0, k=10)(logits.softmax(1), target[:, None])
    ours = hausdorff_er_loss(logits, target, include_background=True, weight_dice=0)
    # kornia stores its kernel (0.2, 1/7) in float32, hence agreement to ~1e-7, not to float64 precision
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-9)
    assert float(ours) > 0.01


def _scipy_er(error: np.ndarray, valid: np.ndarray, erosions: int, alpha: float) -> np.ndarray:
    """Transcription of the erosion sum with numpy/scipy: per image and channel, ignored voxels held at 0."""
    out = np.zeros_like(error)
    dim = error.ndim - 2
    cross = ndimage.generate_binary_structure(dim, 1).astype(float)
    cross /= cross.sum()
    for b in range(error.shape[0]):
        for c in range(error.shape[1]):
            f = error[b, c] * valid[b]
            for k in range(1, erosions + 1):
                g = ndimage.correlate(f, cross, mode="constant", cval=0.0)
                g = np.maximum(g - 0.5, 0) * valid[b]
                lo, hi = g[valid[b]].min(), g[valid[b]].max()
                if hi > lo:
                    g = (g - lo) / (hi - lo) * valid[b]
                out[b, c] += k ** alpha * g
                f = g
    return out


@pytest.mark.parametrize("dim", [2, 3])
def test_erosions_equal_a_scipy_transcription_with_ignored_voxels(dim):
    rng = np.random.default_rng(dim)
    shape = (2, 2, 14, 15) if dim == 2 else (2, 2, 7, 8, 9)
    error = rng.random(shape) ** 0.3  # mostly large errors, so many erosions survive
    valid = rng.random((shape[0], *shape[2:])) > 0.15
    expected = _scipy_er(error, valid, 10, 2.0)
    ours = erosion_residuals(torch.from_numpy(error), 10, 2.0, torch.from_numpy(valid)).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-10, atol=1e-12)
    assert (expected > 0).mean() > 0.1


def test_loss_with_ignore_is_the_mean_over_counted_voxels():
    g = torch.Generator().manual_seed(3)
    logits = 3 * torch.randn(1, 2, 12, 12, generator=g, dtype=torch.float64)
    target = torch.randint(0, 2, (1, 12, 12), generator=g)
    target[0, :3] = 255
    valid = (target != 255).numpy()
    p = logits.softmax(1).numpy()
    t = torch.nn.functional.one_hot(target.clamp_max(1), 2).movedim(-1, 1).numpy().astype(float)
    error = ((p - t) ** 2)[:, 1:]
    expected = _scipy_er(error, valid, 10, 2.0).sum() / valid.sum()
    value = hausdorff_er_loss(logits, target, ignore_index=255, weight_dice=0)
    assert float(value) == pytest.approx(expected, rel=1e-10)


def test_module_equals_function_and_registry():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, C, 9, 9, generator=g)
    target = torch.randint(0, C, (2, 9, 9), generator=g)
    kwargs = dict(erosions=4, alpha=1.5, weight_dice=0.5, include_background=True, batch=True)
    torch.testing.assert_close(HausdorffERLoss(**kwargs)(logits, target), hausdorff_er_loss(logits, target, **kwargs))
    assert isinstance(build_loss("hausdorff_er"), HausdorffERLoss)


@pytest.mark.parametrize("kwargs, message", [
    ({"erosions": 0}, "erosions"), ({"erosions": 2.5}, "erosions"), ({"alpha": -1.0}, "alpha"),
    ({"weight_dice": -0.1}, "weight_dice"),
])
def test_bad_hyper_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HausdorffERLoss(**kwargs)


def test_bad_input():
    with pytest.raises(ValueError, match="logits"):
        hausdorff_er_loss(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="target"):
        hausdorff_er_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="erosions"):
        hausdorff_er_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), erosions=0)
